//! Fusing the keyword and the vector rankings of one query into one.
//!
//! The default is chosen by measurement (docs/rag.md, `keel rag eval --fusion`): a mix of scores, BM25 divided
//! by the query's best and cosine similarity as it is (its theoretical range). Normalising the cosine by its
//! theoretical range rather than by the candidates' spread is what keeps a weak vector side from hurting: when
//! the embeddings model cannot tell the candidates apart their similarities are close together, so the
//! vector side barely moves the ranking, where min-max scaling would stretch them to the full range and rank
//! fusion (RRF) gives it as much say as BM25 whatever its quality. On the SQuAD and SQuADShifts sets, RRF
//! loses to BM25 alone as soon as the vector side is weaker; this mix stays above BM25 even with the vector
//! side degraded to nDCG@10 0.47 (`--dense-noise`).

use std::collections::HashMap;

/// How two rankings become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal rank fusion: Σ 1 / (k + rank).
    Rrf { k: f32 },
    /// A fixed mix of scores normalised per query: `weight` × BM25 (divided by the query's best) + (1 − weight) ×
    /// cosine similarity (min-max over the candidates).
    Mix { weight: f32 },
    /// A mix of scores normalised by their theoretical range: `weight` × BM25 / the query's best BM25 + (1 −
    /// weight) × cosine similarity as it is; a chunk missing from one list gets that list's lowest score.
    Tmm { weight: f32 },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Tmm { weight: 0.4 }
    }
}

impl Fusion {
    /// Parses `rrf`, `rrf:K`, `mix:W`.
    pub fn parse(s: &str) -> Option<Fusion> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        let arg = match arg {
            Some(a) => Some(a.parse::<f32>().ok().filter(|x| x.is_finite() && *x >= 0.0)?),
            None => None,
        };
        match name {
            "rrf" => Some(Fusion::Rrf { k: arg.unwrap_or(60.0) }),
            "mix" => Some(Fusion::Mix { weight: arg.unwrap_or(0.5).min(1.0) }),
            "tmm" => Some(Fusion::Tmm { weight: arg.unwrap_or(0.5).min(1.0) }),
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Fusion::Rrf { k } => format!("rrf:{k}"),
            Fusion::Mix { weight } => format!("mix:{weight}"),
            Fusion::Tmm { weight } => format!("tmm:{weight}"),
        }
    }

    /// Fuses two rankings (`(id, score)`, best first) into one, best first, with each id's fused score.
    pub fn fuse(&self, keyword: &[(u64, f32)], vector: &[(u64, f32)]) -> Vec<(u64, f32)> {
        let mut scores: HashMap<u64, f32> = HashMap::new();
        match *self {
            Fusion::Rrf { k } => {
                for list in [keyword, vector] {
                    for (rank, (id, _)) in list.iter().enumerate() {
                        *scores.entry(*id).or_default() += 1.0 / (k + rank as f32 + 1.0);
                    }
                }
            }
            Fusion::Mix { weight } => {
                let best = keyword.first().map_or(1.0, |(_, s)| s.max(f32::MIN_POSITIVE));
                for (id, s) in keyword {
                    *scores.entry(*id).or_default() += weight * s / best;
                }
                let (lo, hi) = min_max(vector);
                for (id, s) in vector {
                    let n = if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
                    *scores.entry(*id).or_default() += (1.0 - weight) * n;
                }
            }
            Fusion::Tmm { weight } => {
                let best = keyword.first().map_or(1.0, |(_, s)| s.max(f32::MIN_POSITIVE));
                let kw: HashMap<u64, f32> = keyword.iter().map(|(id, s)| (*id, s / best)).collect();
                let dense: HashMap<u64, f32> = vector.iter().copied().collect();
                let kw_floor = kw.values().copied().fold(f32::INFINITY, f32::min);
                let dense_floor = dense.values().copied().fold(f32::INFINITY, f32::min);
                for id in kw.keys().chain(dense.keys()) {
                    let k = kw.get(id).copied().unwrap_or(if kw_floor.is_finite() { kw_floor } else { 0.0 });
                    let d = dense.get(id).copied().unwrap_or(if dense_floor.is_finite() { dense_floor } else { 0.0 });
                    scores.insert(*id, weight * k + (1.0 - weight) * d);
                }
            }
        }
        let mut out: Vec<(u64, f32)> = scores.into_iter().collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

fn min_max(list: &[(u64, f32)]) -> (f32, f32) {
    list.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| (lo.min(*s), hi.max(*s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_rewards_agreement() {
        let kw = [(1, 9.0), (2, 5.0), (3, 1.0)];
        let vec = [(2, 0.9), (4, 0.8), (5, 0.1)];
        let fused = Fusion::Rrf { k: 60.0 }.fuse(&kw, &vec);
        assert_eq!(fused[0].0, 2, "{fused:?}");
        assert_eq!(fused.len(), 5);
    }

    #[test]
    fn a_flat_vector_side_barely_moves_the_keyword_ranking() {
        let kw = [(1, 10.0), (2, 9.0), (3, 5.0)];
        // The vector side cannot tell them apart and has them in reverse order.
        let flat = [(3, 0.51), (2, 0.50), (1, 0.49)];
        let order = |l: Vec<(u64, f32)>| l.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(order(Fusion::default().fuse(&kw, &flat)), vec![1, 2, 3]);
        // Min-max scaling and rank fusion let it overturn BM25.
        assert_ne!(order(Fusion::Mix { weight: 0.5 }.fuse(&kw, &flat))[0], 1);
        // A confident vector side does move it.
        let sharp = [(2, 0.9), (1, 0.3), (3, 0.2)];
        assert_eq!(order(Fusion::default().fuse(&kw, &sharp))[0], 2);
        // A chunk only one side found gets the other side's lowest score, not zero.
        let fused = Fusion::default().fuse(&[(1, 10.0)], &[(2, 0.8)]);
        assert_eq!(fused.len(), 2);
    }

    #[test]
    fn parse_names() {
        assert_eq!(Fusion::parse("rrf"), Some(Fusion::Rrf { k: 60.0 }));
        assert_eq!(Fusion::parse("mix:0.7"), Some(Fusion::Mix { weight: 0.7 }));
        assert_eq!(Fusion::parse("mix:x"), None);
        assert_eq!(Fusion::parse("nope"), None);
    }
}
