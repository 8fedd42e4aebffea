//! Shared by the targets: one input split into the pieces a network would deliver.

/// The bytes after the first, cut into transport chunks whose sizes come from the first byte (so the fuzzer
/// explores every way a body can be split, including inside a UTF-8 character or an SSE line).
pub fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
    let Some((&seed, rest)) = data.split_first() else { return Vec::new() };
    let size = usize::from(seed % 64) + 1;
    rest.chunks(size).map(<[u8]>::to_vec).collect()
}
