//! Operations on binary masks (row-major `bool` per pixel).

/// Keeps the 4-connected components of `mask` with at least `min_size` pixels.
pub fn keep_large_components(mask: &[bool], w: usize, h: usize, min_size: usize) -> Vec<bool> {
    let mut label = vec![usize::MAX; w * h];
    let mut keep = vec![false; w * h];
    let mut stack = Vec::new();
    let mut members = Vec::new();
    for start in 0..w * h {
        if !mask[start] || label[start] != usize::MAX {
            continue;
        }
        members.clear();
        label[start] = start;
        stack.push(start);
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for n in neighbours.into_iter().flatten() {
                if mask[n] && label[n] == usize::MAX {
                    label[n] = start;
                    stack.push(n);
                }
            }
        }
        if members.len() >= min_size {
            for &i in &members {
                keep[i] = true;
            }
        }
    }
    keep
}
