//! Short copies and comparisons of bytes that stay inline instead of calling
//! the C library.
//!
//! The image's static binary links musl, whose `memcpy` starts every copy
//! with `rep movsq` and whose `memcmp` compares byte by byte. A list page
//! makes about a thousand copies of a few bytes (each key and string of its
//! JSON) and fifty comparisons of a few hundred (the decoded-task cache's
//! record check): in a profile of the musl build `memcpy` and `memcmp` were
//! 21 % of the page's CPU, against 7 % for glibc's. These functions use only
//! fixed-size loads and stores, which the compiler emits in place, the way
//! glibc's own routines handle short lengths.

/// Appends `src` to `out`, as `out.extend_from_slice(src)` does.
pub fn extend(out: &mut Vec<u8>, src: &[u8]) {
    let n = src.len();
    if n == 0 || n > 32 {
        // Long copies amortise the call; empty ones have nothing to do.
        out.extend_from_slice(src);
        return;
    }
    let at = out.len();
    out.extend_from_slice(&[0; 32]);
    let dst = &mut out[at..at + n];
    match n {
        16.. => overlapping::<16>(dst, src),
        8.. => overlapping::<8>(dst, src),
        4.. => overlapping::<4>(dst, src),
        // 1 to 3 bytes: first, middle and last cover them all.
        _ => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
    }
    out.truncate(at + n);
}

/// Copies `src` into `dst` (the same length, `K` to `2K` bytes) as its
/// first and its last `K` bytes, which overlap unless the length is `2K`.
fn overlapping<const K: usize>(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    let head: [u8; K] = src[..K].try_into().expect("K bytes");
    let tail: [u8; K] = src[n - K..].try_into().expect("K bytes");
    dst[..K].copy_from_slice(&head);
    dst[n - K..].copy_from_slice(&tail);
}

/// Whether `a` and `b` hold the same bytes, as `a == b` says.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(16), b.chunks_exact(16));
    let word = |c: &[u8]| u128::from_ne_bytes(c.try_into().expect("16 bytes"));
    let diff = (&mut x)
        .zip(&mut y)
        .fold(0, |d, (p, q)| d | (word(p) ^ word(q)));
    let tail = x
        .remainder()
        .iter()
        .zip(y.remainder())
        .fold(0, |d, (p, q)| d | (p ^ q));
    diff == 0 && tail == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn extend_appends_exactly_the_bytes(
            prefix in prop::collection::vec(any::<u8>(), 0..40),
            src in prop::collection::vec(any::<u8>(), 0..80),
            spare in 0usize..40,
        ) {
            let mut out = Vec::with_capacity(prefix.len() + spare);
            out.extend_from_slice(&prefix);
            extend(&mut out, &src);
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            prop_assert_eq!(&out[prefix.len()..], &src[..]);
        }

        #[test]
        fn equal_is_byte_equality(
            a in prop::collection::vec(any::<u8>(), 0..80),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            prop_assert!(equal(&a, &a.clone()));
            if !a.is_empty() {
                // Any one bit different, anywhere, is seen.
                let mut b = a.clone();
                b[flip.index(a.len())] ^= 1 << bit;
                prop_assert!(!equal(&a, &b));
                prop_assert!(!equal(&a, &a[1..]));
            }
        }
    }

    #[test]
    fn every_length_up_to_past_the_inline_ones() {
        for n in 0..=70usize {
            let src: Vec<u8> = (0..n).map(|i| i as u8 + 1).collect();
            let mut out = b"x".to_vec();
            extend(&mut out, &src);
            assert_eq!(out[1..], src[..], "length {n}");
            assert_eq!(out.len(), n + 1);
            let mut other = src.clone();
            assert!(equal(&src, &other));
            if let Some(last) = other.last_mut() {
                *last ^= 0x80;
                assert!(!equal(&src, &other), "length {n}");
            }
        }
    }
}
