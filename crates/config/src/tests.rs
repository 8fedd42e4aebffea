//! Configuration parsing and validation, driven by examples.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use expect_test::{Expect, expect};

use super::*;

fn env() -> HashMap<String, String> {
    HashMap::from([("OPENAI_API_KEY".to_string(), "sk-test".to_string())])
}

fn check_err(text: &str, expected: Expect) {
    let errs = parse(text, &env()).expect_err("config should be rejected");
    expected.assert_eq(&errs.to_string());
}

#[test]
fn minimal_config_resolves_defaults() {
    let cfg = parse(
        r#"
        [providers.openai]
        api_key_env = "OPENAI_API_KEY"
        [models.fast]
        provider = "openai"
        model = "gpt-4o-mini"
        "#,
        &env(),
    )
    .unwrap();
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
    let p = &cfg.providers[&ProviderId::from("openai")];
    assert_eq!(p.kind, ProviderKind::OpenAi);
    assert_eq!(p.base_url, "https://api.openai.com/v1");
    assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-test");
    assert_eq!(format!("{:?}", p.api_key), "Some(Secret(***))");
    assert_eq!(cfg.models["fast"].targets[0].model, "gpt-4o-mini");
}

#[test]
fn reports_every_error_at_once_with_paths() {
    check_err(
        r#"
        [server]
        listen = "nowhere"
        log_format = "xml"
        [providers.openai]
        api_key_env = "MISSING_KEY"
        [providers.local]
        kind = "vllm"
        [providers.az]
        kind = "azure"
        base_url = "https://x.openai.azure.com"
        api_key_env = "OPENAI_API_KEY"
        [models.fast]
        provider = "opnai"
        [models.slow]
        "#,
        expect![[r#"
            server.listen: not a socket address: "nowhere" (expected HOST:PORT)
            server.log_format: unknown format "xml" (expected "text" or "json")
            providers.az.api_version: required for kind "azure" (for example "2024-10-21")
            providers.local.base_url: required for kind "vllm"
            providers.openai.api_key_env: environment variable MISSING_KEY is not set
            models.fast.provider: unknown provider "opnai" (known: az, local, openai)
            models.slow.provider: required: the name of a provider"#]],
    );
}

#[test]
fn unknown_kind_and_inline_secret_are_rejected() {
    check_err(
        r#"
        [providers.x]
        kind = "opnai"
        api_key = "sk-live"
        "#,
        expect![[r#"
            providers.x.kind: unknown provider kind "opnai" (expected one of: openai, azure, vllm, ollama, groq, together, mistral, openai_compatible, anthropic, local)
            providers.x.api_key: secrets are not written in the config file: use api_key_env = "ENV_VAR_NAME""#]],
    );
}

#[test]
fn unknown_keys_and_bad_types_are_rejected() {
    check_err(
        "[server]\nlisten = 8080\n",
        expect!["server.listen: invalid type: integer `8080`, expected a string (at line 2, column 1)"],
    );
    check_err(
        "[sever]\n",
        expect![
            "sever: unknown field `sever`, expected one of `server`, `providers`, `models`, `reliability`, `store`, `log`, `auth`, `telemetry`, `prices`, `cache`, `rag`, `guard`, `templates`, `online_evals`, `routers`, `reload` (at line 1, column 2)"
        ],
    );
}

#[test]
fn every_type_error_and_unknown_key_is_reported_with_its_line_column_and_path() {
    check_err(
        r#"
[server]
listen = 8080
max_body_bytes = "big"
lissen = "x"

[providers.openai]
api_key_env = "OPENAI_API_KEY"
timeout = 5

[models.fast]
provider = "openai"
cache = { mode = 7 }
"#,
        expect![[r#"
            models.fast.cache.mode: invalid type: integer `7`, expected a string (at line 13, column 11)
            providers.openai.timeout: unknown field `timeout`, expected one of `kind`, `base_url`, `api_key_env`, `api_key`, `api_version`, `headers`, `connect_timeout_ms`, `request_timeout_ms`, `pool_max_idle_per_host`, `pool_idle_timeout_ms`, `default_max_tokens`, `models_dir`, `threads`, `queue_depth`, `embed_queue_depth`, `max_response_bytes`, `context_size`, `embeddings_engine`, `onnxruntime_library` (at line 9, column 1)
            server.lissen: unknown field `lissen`, expected one of `listen`, `max_body_bytes`, `log_format`, `shutdown_grace_ms`, `shutdown_delay_ms`, `max_in_flight`, `admission_queue`, `admission_queue_timeout_ms`, `max_connections`, `header_read_timeout_ms`, `body_read_timeout_ms`, `idle_timeout_ms`, `max_header_bytes` (at line 5, column 1)
            server.listen: invalid type: integer `8080`, expected a string (at line 3, column 1)
            server.max_body_bytes: invalid type: string "big", expected u64 (at line 4, column 1)"#]],
    );
}

#[test]
fn a_syntax_error_has_its_line_and_column() {
    check_err(
        "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = = 3\n",
        expect![[r#"line 3, column 18: invalid string; expected `"`, `'`"#]],
    );
}

#[test]
fn headers_expand_environment_references() {
    let cfg = parse(
        r#"
        [providers.gw]
        kind = "openai_compatible"
        base_url = "http://127.0.0.1:9/v1/"
        headers = { "x-org" = "org-${OPENAI_API_KEY}" }
        "#,
        &env(),
    )
    .unwrap();
    let p = &cfg.providers[&ProviderId::from("gw")];
    assert_eq!(p.base_url, "http://127.0.0.1:9/v1");
    assert_eq!(p.headers, vec![("x-org".to_string(), "org-sk-test".to_string())]);
    check_err(
        "[providers.gw]\nkind = \"vllm\"\nbase_url = \"http://h\"\nheaders = { a = \"${NOPE}\" }\n",
        expect![[r#"providers.gw.headers.a: environment variable NOPE is not set"#]],
    );
}

#[test]
fn the_onnxruntime_library_can_be_set_and_the_removed_engine_setting_is_refused_clearly() {
    let cfg = parse(
        r#"
        [providers.here]
        kind = "local"
        onnxruntime_library = "/opt/ort/libonnxruntime.so"
        "#,
        &env(),
    )
    .unwrap();
    let here = &cfg.providers[&ProviderId::from("here")].local;
    assert_eq!(here.onnxruntime_library.as_deref(), Some(std::path::Path::new("/opt/ort/libonnxruntime.so")));
    check_err(
        "[providers.here]\nkind = \"local\"\nembeddings_engine = \"candle\"\n",
        expect![[
            r#"providers.here.embeddings_engine: no longer a setting: local embeddings run on ONNX Runtime (the candle engine was removed: 3x slower, and a tenth of keel's build); remove the line"#
        ]],
    );
}

#[test]
fn cache_policies_come_from_the_alias_over_the_defaults() {
    let cfg = parse(
        r#"
        [providers.openai]
        api_key_env = "OPENAI_API_KEY"
        [cache]
        mode = "read-write"
        ttl_seconds = 600
        [cache.semantic]
        model = "embed"
        threshold = 0.9
        [models.plain]
        provider = "openai"
        [models.faq]
        provider = "openai"
        cache = { semantic = true, ttl_seconds = 60 }
        [models.strict]
        provider = "openai"
        cache = { mode = "off" }
        [models.embed]
        provider = "openai"
        "#,
        &env(),
    )
    .unwrap();
    let p = |m: &str| cfg.models[m].cache;
    assert_eq!(
        p("plain"),
        CachePolicy { mode: CacheMode::ReadWrite, ttl: std::time::Duration::from_secs(600), semantic: None }
    );
    assert_eq!(
        p("faq"),
        CachePolicy { mode: CacheMode::ReadWrite, ttl: std::time::Duration::from_secs(60), semantic: Some(0.9) }
    );
    assert_eq!(p("strict").mode, CacheMode::Off);
    assert_eq!(cfg.cache.backend, CacheBackend::Memory { max_bytes: 256 << 20 });
    assert_eq!(cfg.cache.semantic_model, "embed");
    // Without [cache], every alias is off: caching is opt-in.
    let plain =
        parse("[providers.openai]\napi_key_env = \"OPENAI_API_KEY\"\n[models.a]\nprovider = \"openai\"\n", &env())
            .unwrap();
    assert_eq!(plain.models["a"].cache.mode, CacheMode::Off);
}

#[test]
fn bad_cache_settings_are_reported_with_their_paths() {
    check_err(
        r#"
        [providers.openai]
        api_key_env = "OPENAI_API_KEY"
        [cache]
        backend = "redis"
        mode = "sometimes"
        [models.a]
        provider = "openai"
        cache = { semantic = true, threshold = 1.5, ttl_seconds = 0 }
        [models.b]
        provider = "openai"
        cache = { threshold = 0.9 }
        "#,
        expect![[r#"
            models.a.cache.ttl_seconds: must be greater than 0
            models.a.cache.threshold: must be between 0 and 1, got 1.5
            models.b.cache.threshold: set, but semantic is not enabled for this alias (semantic = true)
            cache.redis: required when backend = "redis"
            cache.mode: unknown mode "sometimes" (expected off, read, write or read-write)
            cache.semantic.model: unknown model alias "all-minilm-l6-v2" (the embeddings model of the semantic cache)"#]],
    );
}

#[test]
fn a_grounded_alias_names_its_collection_and_needs_the_embeddings_model() {
    let cfg = parse(
        r#"
        [providers.openai]
        api_key_env = "OPENAI_API_KEY"
        [rag]
        model = "emb"
        [models.emb]
        provider = "openai"
        [models.support]
        provider = "openai"
        rag = { collection = "docs", k = 3, mode = "bm25" }
        [models.plain]
        provider = "openai"
        "#,
        &env(),
    )
    .unwrap();
    let r = cfg.models["support"].retrieval.as_ref().unwrap();
    assert_eq!((r.collection.as_str(), r.k, r.mode), ("docs", 3, RetrievalMode::Bm25));
    assert_eq!(cfg.models["plain"].retrieval, None);

    check_err(
        r#"
        [providers.openai]
        api_key_env = "OPENAI_API_KEY"
        [models.support]
        provider = "openai"
        rag = { collection = "../docs", k = 0, mode = "fuzzy" }
        [models.other]
        provider = "openai"
        rag = { k = 2 }
        "#,
        expect![[r#"
            models.other.rag.collection: required: the collection to answer from
            models.support.rag.collection: "../docs" is not a collection name (letters, digits, -, _, .)"#]],
    );
    check_err(
        r#"
        [providers.openai]
        api_key_env = "OPENAI_API_KEY"
        [models.support]
        provider = "openai"
        rag = { collection = "docs", k = 21, mode = "fuzzy" }
        "#,
        expect![[r#"
            models.support.rag.k: must be between 1 and 20
            models.support.rag.mode: "fuzzy" is not one of bm25, vector, hybrid
            models.support.rag: retrieval needs the collections' embeddings model: no model alias "all-minilm-l6-v2" is configured ([rag] model)"#]],
    );
}

#[test]
fn online_evaluations_name_known_requests_a_fraction_and_a_check_and_need_full_bodies() {
    let base = "[providers.local]\nkind = \"local\"\n[models.small]\nprovider = \"local\"\nmodel = \"smollm2\"\n\
                [templates.t]\nmodel = \"small\"\nprompt = \"{{ q }}\"\n";
    let cfg = parse(
        &format!(
            "{base}[log]\nbodies = \"full\"\n[online_evals.fmt]\ntemplate = \"t\"\nsample = 0.25\n\
             check = {{ type = \"regex\", pattern = \"^[A-D]$\" }}\n"
        ),
        &env(),
    )
    .unwrap();
    let e = &cfg.online_evals["fmt"];
    assert_eq!((e.template.as_deref(), e.route.as_deref(), e.sample), (Some("t"), None, 0.25));
    assert_eq!(e.check.get("pattern").and_then(|p| p.as_str()), Some("^[A-D]$"));
    check_err(
        &format!(
            "{base}[online_evals.x]\nroute = \"nope\"\nsample = 0\ncheck = {{ type = \"regex\", pattern = \"a\" }}\n\
             [online_evals.y]\ntemplate = \"t\"\n"
        ),
        expect![[r#"
            online_evals.x.route: unknown model alias "nope"
            online_evals.x.sample: 0 is not a fraction in (0, 1]
            online_evals.x: online evaluation reads the prompt and the answer from the request log: set [log] enabled = true and bodies = "full"
            online_evals.y.check: required: a check table as in eval suites, e.g. { type = "regex", pattern = "..." }
            online_evals.y: online evaluation reads the prompt and the answer from the request log: set [log] enabled = true and bodies = "full""#]],
    );
}

#[test]
fn routers_name_known_aliases_and_templates_and_rules_send_only_to_aliases_or_cascades() {
    let base = "[providers.local]\nkind = \"local\"\n[models.small]\nprovider = \"local\"\nmodel = \"smollm2\"\n\
                [models.large]\nprovider = \"local\"\nmodel = \"qwen\"\n\
                [templates.t]\nmodel = \"auto\"\nprompt = \"{{ q }}\"\n";
    let cfg = parse(
        &format!(
            "{base}[routers.auto]\ndefault = \"large\"\nrules = [{{ to = \"small\", tasks = [\"math\"], \
             max_prompt_tokens = 500, templates = [\"t\"] }}, {{ to = \"cheap\", tags = [\"bulk\"] }}]\n\
             [routers.cheap]\ncascade = [\"small\", \"large\"]\ncheck = {{ type = \"labels\", labels = [\"yes\", \"no\"] }}\n\
             [routers.guess]\nlearned = {{ weights = \"r.json\", small = \"small\", large = \"large\", embedding = \"small\" }}\n\
             [routers.front]\ndefault = \"guess\"\n"
        ),
        &env(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let crate::RouterKind::Rules { rules, default } = &cfg.routers["auto"].kind else { panic!("rules") };
    assert_eq!((rules.len(), default.as_str()), (2, "large"));
    assert_eq!((rules[0].tasks.as_slice(), rules[0].max_prompt_tokens), ([crate::Task::Math].as_slice(), Some(500)));
    let crate::RouterKind::Cascade(c) = &cfg.routers["cheap"].kind else { panic!("a cascade") };
    assert_eq!(c.stream, crate::CascadeStream::Buffer);
    assert_eq!(c.check, crate::CascadeCheck::Labels { labels: vec!["yes".into(), "no".into()], case_sensitive: false });
    assert_eq!(cfg.templates["t"].model, "auto", "a template may name a router");
    let crate::RouterKind::Learned(l) = &cfg.routers["guess"].kind else { panic!("learned") };
    assert_eq!(
        (l.weights.to_str(), l.small.as_str(), l.large.as_str(), l.threshold),
        (Some("r.json"), "small", "large", None)
    );

    check_err(
        &format!(
            "{base}[routers.small]\ndefault = \"large\"\n\
             [routers.a]\nrules = [{{ to = \"b\" }}, {{ tasks = [\"poetry\"], to = \"nope\" }}, {{ templates = [\"x\"] }}]\ndefault = \"small\"\n\
             [routers.b]\ndefault = \"a\"\n\
             [routers.c]\ncascade = [\"small\"]\ncheck = {{ type = \"labels\" }}\nstream = \"sometimes\"\n\
             [routers.d]\ncascade = [\"small\", \"b\"]\ncheck = {{ type = \"judge\", rubric = \" \" }}\n\
             [routers.e]\ncascade = [\"small\", \"large\"]\n\
             [routers.f]\ncascade = [\"small\", \"large\"]\ncheck = {{ type = \"regex\", pattern = \"(\" }}\ndefault = \"small\"\n\
             [routers.g]\ncascade = [\"small\", \"large\"]\ncheck = {{ type = \"logprob\", min_mean_logprob = 0.5 }}\n\
             [routers.h]\ndefault = \"large\"\ncheck = {{ type = \"schema\" }}\n\
             [routers.i]\nlearned = {{ small = \"auto\", large = \"large\", threshold = 1.5 }}\n\
             [routers.j]\nlearned = {{ weights = \"w\", small = \"small\", large = \"large\", embedding = \"small\" }}\nstream = \"buffer\"\n\
             [models.z]\nprovider = \"local\"\nchoose = \"fastest\"\n"
        ),
        expect![[r#"
            models.z.choose: "fastest": expected "config" or "cheapest"
            routers.a.rules[0].to: "b" is a rules router: a rule sends to a model alias, a cascade or a learned router
            routers.a.rules[1].tasks: unknown task "poetry"; one of classification, extraction, math, code, summarization, translation, generation
            routers.a.rules[2].to: required: the alias or router this rule sends to
            routers.b.default: "a" is a rules router: a rule sends to a model alias, a cascade or a learned router
            routers.c.cascade: a cascade needs at least two aliases, cheapest first
            routers.c.check.labels: required: the answers that pass, none empty
            routers.c.stream: "sometimes": expected "buffer" or "refuse"
            routers.d.cascade[1]: a cascade step is a model alias, not a router
            routers.d.check.model: required: the judge's model alias (got "")
            routers.d.check.rubric: required: what a good answer does
            routers.e.check: required: what a cheap answer must pass, e.g. { type = "schema" }
            routers.f: a router is one of: rules (rules = [...] and default), a cascade (cascade = [...]) or learned (learned = { weights, small, large, embedding })
            routers.g.check.min_mean_logprob: required: the lowest mean token log-probability that passes, a number <= 0 (e.g. -0.3)
            routers.h.check: not a setting of this kind of router
            routers.i.learned.small: required: a model alias (got "auto"); a learned router's sides are aliases
            routers.i.learned.embedding: required: a model alias (got ""); a learned router's sides are aliases
            routers.i.learned.weights: required: the file `keel route train` wrote
            routers.i.learned.threshold: a probability from 0 to 1
            routers.j.stream: not a setting of this kind of router
            routers.small: "small" is also a model alias: a client's model names one or the other
            templates.t.model: unknown model alias "auto""#]],
    );
}
