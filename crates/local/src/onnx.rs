//! The fast embedding engine: a BERT sentence encoder run by ONNX Runtime (through `ort`, loading the runtime
//! library at run time from the `onnxruntime` PyPI wheel that `keel models pull` fetches).
//!
//! No ONNX export of the model is needed: the encoder graph is built in memory from the `model.safetensors`
//! weights and `config.json` with ONNX Runtime's Model Editor API, with standard ONNX operators only (opset 20:
//! `LayerNormalization`, exact-erf `Gelu`), and ONNX Runtime's own optimiser fuses it. The graph is ours because
//! it is the part that decides correctness: the same maths as the Hugging Face BERT encoder, fused query/key/value
//! projection, additive attention mask. Tokenization and pooling are in `sbert.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::editor::{Graph, Model, Node, ONNX_DOMAIN, Opset};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::operator::Attribute;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{Outlet, Shape, SymbolicDimensions, Tensor, TensorElementType, ValueType};
use safetensors::{Dtype, SafeTensors};

use crate::LocalError;
use crate::engine::EmbedEngine;
use crate::sbert::{BertConfig, SbertDir, mean_pool_normalize};

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process. The first caller's path wins: a process holds one runtime.
pub fn environment(library: &Path) -> Result<&'static Environment, LocalError> {
    ENVIRONMENT
        .get_or_init(|| {
            let builder = ort::init_from(library).map_err(|e| e.to_string())?;
            // ONNX Runtime logs every graph optimisation at its info level; only what needs attention is kept.
            let logger: ort::logging::LoggerFunction =
                std::sync::Arc::new(|level, category, _id, _at, message| match level {
                    ort::logging::LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, "{message}"),
                    ort::logging::LogLevel::Error | ort::logging::LogLevel::Fatal => {
                        tracing::error!(target: "onnxruntime", category, "{message}")
                    }
                    ort::logging::LogLevel::Verbose | ort::logging::LogLevel::Info => {}
                });
            builder.with_name("keel").with_telemetry(false).with_logger(logger).build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LocalError::Engine(format!("ONNX Runtime: {e}")))
}

/// Where the runtime library is looked for: `$ORT_DYLIB_PATH`, then the models directory (where
/// `keel models pull` puts it).
pub fn find_library(configured: Option<&Path>, models_dir: &Path) -> Option<PathBuf> {
    configured
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| Some(models_dir.join(library_file_name())))
        .filter(|p| p.is_file())
}

/// The runtime library's file name in the models directory: the release keel is tested against, and the one
/// the binding is built for (`ort`'s `api-31` feature: ONNX Runtime 1.31), so that no version warning is due.
pub fn library_file_name() -> &'static str {
    crate::models::ONNXRUNTIME.target
}

pub struct OrtEmbedder {
    // `Session::run` takes `&mut self`; the embedding worker is a single thread, so the lock is never contended.
    session: Mutex<Session>,
    sbert: SbertDir,
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> LocalError + '_ {
    move |e| LocalError::Engine(format!("{what}: {e}"))
}

impl OrtEmbedder {
    pub fn load(dir: &Path, library: &Path, threads: u32) -> Result<Self, LocalError> {
        let env = environment(library)?;
        let sbert = SbertDir::open(dir)?;
        if !sbert.config.hidden_act.eq_ignore_ascii_case("gelu") {
            return Err(LocalError::Engine(format!(
                "{}: hidden_act {:?} is not supported by the ONNX Runtime engine (only \"gelu\")",
                dir.display(),
                sbert.config.hidden_act
            )));
        }
        let bytes = sbert.weights()?;
        let weights = SafeTensors::deserialize(&bytes)
            .map_err(|e| LocalError::Engine(format!("{}: {e}", dir.join("model.safetensors").display())))?;
        let model = build_model(&sbert.config, &Weights::new(&weights))?;
        let options = SessionBuilder::new(env)
            .map_err(ort_err("session options"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| LocalError::Engine(format!("session options: {e}")))?
            .with_intra_threads(threads.max(1) as usize)
            .map_err(|e| LocalError::Engine(format!("session options: {e}")))?
            .with_inter_threads(1)
            .map_err(|e| LocalError::Engine(format!("session options: {e}")))?;
        let session = model.into_session(&options).map_err(ort_err("building the encoder"))?;
        Ok(Self { session: Mutex::new(session), sbert })
    }
}

impl EmbedEngine for OrtEmbedder {
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u64), LocalError> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let batch = self.sbert.tokenize(texts)?;
        let (rows, len) = (batch.rows as i64, batch.len as i64);
        let ids: Vec<i64> = batch.ids.iter().map(|i| i64::from(*i)).collect();
        let types = vec![0i64; ids.len()];
        let positions: Vec<i64> = (0..len).collect();
        // The additive attention mask of the Hugging Face encoder: 0 where a token is read, the most negative
        // float where it is padding.
        let bias: Vec<f32> = batch.mask.iter().map(|m| if *m == 0 { f32::MIN } else { 0.0 }).collect();
        let input = |e| LocalError::Engine(format!("input: {e}"));
        let inputs = ort::inputs![
            "input_ids" => Tensor::from_array(([rows, len], ids)).map_err(input)?,
            "token_type_ids" => Tensor::from_array(([rows, len], types)).map_err(input)?,
            "position_ids" => Tensor::from_array(([1, len], positions)).map_err(input)?,
            "attention_bias" => Tensor::from_array(([rows, 1, 1, len], bias)).map_err(input)?,
        ];
        let mut session = self.session.lock().map_err(|_| LocalError::Engine("encoder session poisoned".into()))?;
        let outputs = session.run(inputs).map_err(ort_err("encoder"))?;
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or_else(|| LocalError::Engine("encoder returned no last_hidden_state".into()))?
            .try_extract_tensor::<f32>()
            .map_err(ort_err("encoder output"))?
            .1;
        let vectors = mean_pool_normalize(hidden, &batch, self.dimensions())?;
        Ok((vectors, batch.tokens))
    }

    fn dimensions(&self) -> usize {
        self.sbert.config.hidden_size
    }

    fn engine(&self) -> &'static str {
        "onnxruntime"
    }
}

/// The safetensors weights, as f32, under either naming (`embeddings.…` or `bert.embeddings.…`).
struct Weights<'a> {
    st: &'a SafeTensors<'a>,
    prefix: &'static str,
}

impl<'a> Weights<'a> {
    fn new(st: &'a SafeTensors<'a>) -> Self {
        let prefix = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
        Self { st, prefix }
    }

    /// The tensor `name` with its shape, checked against `expect`.
    fn get(&self, name: &str, expect: &[usize]) -> Result<Vec<f32>, LocalError> {
        let full = format!("{}{name}", self.prefix);
        let view = self.st.tensor(&full).map_err(|e| LocalError::Engine(format!("weight {full}: {e}")))?;
        if view.shape() != expect {
            return Err(LocalError::Engine(format!("weight {full} has shape {:?}, expected {expect:?}", view.shape())));
        }
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(LocalError::Engine(format!("weight {full}: unsupported dtype {other:?}"))),
        };
        Ok(values)
    }

    /// A PyTorch `Linear` weight (`[out, in]`) transposed to the `[in, out]` a `MatMul` wants.
    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Vec<f32>, LocalError> {
        let w = self.get(name, &[outputs, inputs])?;
        let mut t = vec![0f32; w.len()];
        for o in 0..outputs {
            for i in 0..inputs {
                t[i * outputs + o] = w[o * inputs + i];
            }
        }
        Ok(t)
    }
}

/// Builds graph nodes with unique names.
struct Builder {
    graph: Graph,
    next: usize,
}

impl Builder {
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<Attribute>) -> Result<String, LocalError> {
        let out = format!("{}_{}", op.to_ascii_lowercase(), self.next);
        self.node_into(op, inputs, &[&out], attributes)?;
        Ok(out)
    }

    fn node_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<Attribute>,
    ) -> Result<(), LocalError> {
        self.next += 1;
        let node =
            Node::new(op, ONNX_DOMAIN, format!("n{}", self.next), inputs, outputs, attributes).map_err(ort_err(op))?;
        self.graph.add_node(node).map_err(ort_err(op))
    }

    fn f32(&mut self, name: &str, shape: &[i64], values: &[f32]) -> Result<(), LocalError> {
        let mut t = Tensor::<f32>::new(&Allocator::default(), shape.to_vec()).map_err(ort_err(name))?;
        let (_, data) = t.extract_tensor_mut();
        if data.len() != values.len() {
            return Err(LocalError::Engine(format!("{name}: {} values for shape {shape:?}", values.len())));
        }
        data.copy_from_slice(values);
        self.graph.add_initializer(name, t, false).map_err(ort_err(name))
    }

    fn i64(&mut self, name: &str, values: &[i64]) -> Result<(), LocalError> {
        let mut t = Tensor::<i64>::new(&Allocator::default(), [values.len() as i64]).map_err(ort_err(name))?;
        t.extract_tensor_mut().1.copy_from_slice(values);
        self.graph.add_initializer(name, t, false).map_err(ort_err(name))
    }

    /// LayerNorm `prefix` over the last axis; its output is `output` when given.
    fn layer_norm(
        &mut self,
        x: &str,
        w: &Weights<'_>,
        prefix: &str,
        c: &BertConfig,
        output: Option<&str>,
    ) -> Result<String, LocalError> {
        let h = c.hidden_size;
        let (gamma, beta) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        self.f32(&gamma, &[h as i64], &w.get(&gamma, &[h])?)?;
        self.f32(&beta, &[h as i64], &w.get(&beta, &[h])?)?;
        let attrs = vec![
            Attribute::new("axis", -1i64).map_err(ort_err("axis"))?,
            Attribute::new("epsilon", c.layer_norm_eps as f32).map_err(ort_err("epsilon"))?,
        ];
        match output {
            Some(out) => self.node_into("LayerNormalization", &[x, &gamma, &beta], &[out], attrs).map(|()| out.into()),
            None => self.node("LayerNormalization", &[x, &gamma, &beta], attrs),
        }
    }

    /// `x · W + b` for the `Linear` layer `prefix` (`in` → `out` features).
    fn dense(&mut self, x: &str, w: &Weights<'_>, prefix: &str, inp: usize, out: usize) -> Result<String, LocalError> {
        let (wn, bn) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        self.f32(&wn, &[inp as i64, out as i64], &w.linear(&wn, inp, out)?)?;
        self.f32(&bn, &[out as i64], &w.get(&bn, &[out])?)?;
        let mm = self.node("MatMul", &[x, &wn], vec![])?;
        self.node("Add", &[&mm, &bn], vec![])
    }
}

fn tensor_type(ty: TensorElementType, dims: &[&str]) -> ValueType {
    ValueType::Tensor {
        ty,
        shape: Shape::new(dims.iter().map(|d| if d.is_empty() { 1 } else { -1 })),
        dimension_symbols: SymbolicDimensions::new(dims.iter().map(|d| (*d).to_string())),
    }
}

/// The BERT encoder (embeddings, `num_hidden_layers` post-norm transformer layers) as an ONNX graph with inputs
/// `input_ids`, `token_type_ids` `[batch, seq]`, `position_ids` `[1, seq]`, `attention_bias` `[batch, 1, 1, seq]`
/// and output `last_hidden_state` `[batch, seq, hidden]`.
fn build_model(c: &BertConfig, w: &Weights<'_>) -> Result<Model, LocalError> {
    let e = ort_err("graph");
    let mut graph = Graph::new().map_err(&e)?;
    let i64t = TensorElementType::Int64;
    graph
        .set_inputs([
            Outlet::new("input_ids", tensor_type(i64t, &["batch", "seq"])),
            Outlet::new("token_type_ids", tensor_type(i64t, &["batch", "seq"])),
            Outlet::new("position_ids", tensor_type(i64t, &["", "seq"])),
            Outlet::new("attention_bias", tensor_type(TensorElementType::Float32, &["batch", "", "", "seq"])),
        ])
        .map_err(&e)?;
    graph
        .set_outputs([Outlet::new(
            "last_hidden_state",
            tensor_type(TensorElementType::Float32, &["batch", "seq", "hidden"]),
        )])
        .map_err(&e)?;
    let mut b = Builder { graph, next: 0 };
    let (h, heads) = (c.hidden_size, c.num_attention_heads);
    let dh = h / heads;

    // Embeddings: word + position + token type, then LayerNorm.
    let word_shape = {
        let name = format!("{}embeddings.word_embeddings.weight", w.prefix);
        let view = w.st.tensor(&name).map_err(|err| LocalError::Engine(format!("weight {name}: {err}")))?;
        view.shape().to_vec()
    };
    let vocab = word_shape.first().copied().unwrap_or(0);
    let types_n = {
        let name = format!("{}embeddings.token_type_embeddings.weight", w.prefix);
        w.st.tensor(&name).map(|v| v.shape().first().copied().unwrap_or(0)).unwrap_or(0)
    };
    for (name, rows) in [
        ("embeddings.word_embeddings.weight", vocab),
        ("embeddings.position_embeddings.weight", c.max_position_embeddings),
        ("embeddings.token_type_embeddings.weight", types_n),
    ] {
        b.f32(name, &[rows as i64, h as i64], &w.get(name, &[rows, h])?)?;
    }
    let words = b.node("Gather", &["embeddings.word_embeddings.weight", "input_ids"], vec![])?;
    let positions = b.node("Gather", &["embeddings.position_embeddings.weight", "position_ids"], vec![])?;
    let types = b.node("Gather", &["embeddings.token_type_embeddings.weight", "token_type_ids"], vec![])?;
    let sum = b.node("Add", &[&words, &positions], vec![])?;
    let sum = b.node("Add", &[&sum, &types], vec![])?;
    let mut x = b.layer_norm(&sum, w, "embeddings.LayerNorm", c, None)?;

    b.i64("shape_heads", &[0, 0, heads as i64, dh as i64])?;
    b.i64("shape_hidden", &[0, 0, h as i64])?;
    b.f32("attention_scale", &[], &[1.0 / (dh as f32).sqrt()])?;
    let perm = |p: [i64; 4]| Attribute::new("perm", p.to_vec()).map_err(ort_err("perm"));

    for layer in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        // Query, key and value in one MatMul: [h, 3h].
        let mut qkv_w = vec![0f32; h * 3 * h];
        let mut qkv_b = Vec::with_capacity(3 * h);
        for (part, name) in ["query", "key", "value"].iter().enumerate() {
            let t = w.linear(&format!("{p}.attention.self.{name}.weight"), h, h)?;
            for i in 0..h {
                qkv_w[i * 3 * h + part * h..i * 3 * h + (part + 1) * h].copy_from_slice(&t[i * h..(i + 1) * h]);
            }
            qkv_b.extend(w.get(&format!("{p}.attention.self.{name}.bias"), &[h])?);
        }
        let (wn, bn) = (format!("{p}.qkv.weight"), format!("{p}.qkv.bias"));
        b.f32(&wn, &[h as i64, 3 * h as i64], &qkv_w)?;
        b.f32(&bn, &[3 * h as i64], &qkv_b)?;
        let qkv = b.node("MatMul", &[&x, &wn], vec![])?;
        let qkv = b.node("Add", &[&qkv, &bn], vec![])?;
        let (q, k, v) = (format!("{p}.q"), format!("{p}.k"), format!("{p}.v"));
        let split = vec![
            Attribute::new("axis", 2i64).map_err(ort_err("axis"))?,
            Attribute::new("num_outputs", 3i64).map_err(ort_err("num_outputs"))?,
        ];
        b.node_into("Split", &[&qkv], &[&q, &k, &v], split)?;
        let q = b.node("Reshape", &[&q, "shape_heads"], vec![])?;
        let q = b.node("Transpose", &[&q], vec![perm([0, 2, 1, 3])?])?;
        let q = b.node("Mul", &[&q, "attention_scale"], vec![])?;
        let k = b.node("Reshape", &[&k, "shape_heads"], vec![])?;
        let k = b.node("Transpose", &[&k], vec![perm([0, 2, 3, 1])?])?;
        let v = b.node("Reshape", &[&v, "shape_heads"], vec![])?;
        let v = b.node("Transpose", &[&v], vec![perm([0, 2, 1, 3])?])?;
        let scores = b.node("MatMul", &[&q, &k], vec![])?;
        let scores = b.node("Add", &[&scores, "attention_bias"], vec![])?;
        let probs = b.node("Softmax", &[&scores], vec![Attribute::new("axis", -1i64).map_err(ort_err("axis"))?])?;
        let ctx = b.node("MatMul", &[&probs, &v], vec![])?;
        let ctx = b.node("Transpose", &[&ctx], vec![perm([0, 2, 1, 3])?])?;
        let ctx = b.node("Reshape", &[&ctx, "shape_hidden"], vec![])?;
        let attn = b.dense(&ctx, w, &format!("{p}.attention.output.dense"), h, h)?;
        let attn = b.node("Add", &[&attn, &x], vec![])?;
        let attn = b.layer_norm(&attn, w, &format!("{p}.attention.output.LayerNorm"), c, None)?;
        let inter = b.dense(&attn, w, &format!("{p}.intermediate.dense"), h, c.intermediate_size)?;
        let inter = b.node("Gelu", &[&inter], vec![])?;
        let out = b.dense(&inter, w, &format!("{p}.output.dense"), c.intermediate_size, h)?;
        let out = b.node("Add", &[&out, &attn], vec![])?;
        let last = (layer + 1 == c.num_hidden_layers).then_some("last_hidden_state");
        x = b.layer_norm(&out, w, &format!("{p}.output.LayerNorm"), c, last)?;
    }
    if c.num_hidden_layers == 0 {
        b.node_into("Identity", &[&x], &["last_hidden_state"], vec![])?;
    }
    let mut model = Model::new([Opset::new(ONNX_DOMAIN, 20).map_err(&e)?]).map_err(&e)?;
    model.set_graph(b.graph).map_err(&e)?;
    Ok(model)
}
