//! The masks the attention kernels realise, in absolute positions: a chunk of `q_len` queries
//! against `kv_len` keys puts query row `i` at position `q_offset + i`, `q_offset = kv_len - q_len`.
//! Each function says whether key `j` is visible to chunk row `i`; the GPU tests compare the
//! kernels with the f64 reference under exactly these masks
//! ([`chunk_attention_rows`](crate::reference::chunk_attention_rows)).

/// Dense causal: `j <= q_offset + i`.
pub fn causal(q_offset: usize, i: usize, j: usize) -> bool {
    j <= q_offset + i
}

/// A-shape (absolute): `j <= p` and (`j < n_init` or `p - j < n_local`), `p = q_offset + i`.
pub fn a_shape(q_offset: usize, n_init: usize, n_local: usize, i: usize, j: usize) -> bool {
    let position = q_offset + i;
    j <= position && (j < n_init || position - j < n_local)
}

/// Block-sparse: the key block `j / 64` is listed for the chunk's 64-row block `i / 64`
/// (`listed`: the entries the kernel reads, count clamped to the capacity), causal in absolute
/// positions.
pub fn block_sparse(listed: &[i32], q_offset: usize, i: usize, j: usize) -> bool {
    causal(q_offset, i, j) && i32::try_from(j / 64).is_ok_and(|block| listed.contains(&block))
}

/// Vertical-slash (converted index): `j` lies in a listed 64-key range `[s, s + 64)` or is a
/// listed column of the chunk's 64-row block `i / 64` (`ranges`, `columns`: the entries the
/// kernel reads), causal in absolute positions.
pub fn vertical_slash(ranges: &[i32], columns: &[i32], q_offset: usize, i: usize, j: usize) -> bool {
    let key = j as i64;
    causal(q_offset, i, j)
        && (ranges.iter().any(|&s| s as i64 <= key && key < s as i64 + 64) || columns.iter().any(|&c| c as i64 == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_use_absolute_positions() {
        // A chunk of 10 queries after a prefix of 90: row 0 sits at position 90.
        assert!(causal(90, 0, 90) && !causal(90, 0, 91) && causal(90, 9, 99));
        // q_len == kv_len is the one-shot mask.
        assert!(causal(0, 5, 5) && !causal(0, 5, 6));
        // Sinks 4, window 8: position 100 sees 0..4 and 93..=100.
        let visible: Vec<usize> = (0..200).filter(|&j| a_shape(90, 4, 8, 10, j)).collect();
        assert_eq!(visible, [0, 1, 2, 3, 93, 94, 95, 96, 97, 98, 99, 100]);
        // Block 1 listed: keys 64..128 up to the position.
        assert!(block_sparse(&[1], 70, 0, 64) && block_sparse(&[1], 70, 0, 70) && !block_sparse(&[1], 70, 0, 71));
        assert!(!block_sparse(&[1], 70, 0, 10));
        // A range from 30 and the column 5: 30..94 and 5, up to the position.
        assert!(vertical_slash(&[30], &[5], 100, 0, 93) && !vertical_slash(&[30], &[5], 100, 0, 94));
        assert!(vertical_slash(&[30], &[5], 100, 0, 5) && !vertical_slash(&[30], &[5], 100, 0, 6));
        assert!(!vertical_slash(&[30], &[5], 40, 0, 41));
    }
}
