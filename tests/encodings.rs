//! Bytes that outlive a release, pinned to values computed outside this code
//! (`sha256sum`, Python's `base64.urlsafe_b64encode`): a stored token digest
//! must keep matching the token it was made from, and a cursor a client holds
//! must keep decoding to the same position. A change in how the hashing or
//! base64 crates behave (an upgrade, a different engine) fails here instead of
//! locking out every token holder or breaking paging mid-list.

use devops_api::auth;
use devops_api::domain::{CURSOR_PATTERN, TaskId, decode_cursor, encode_cursor};

/// Token digests are SHA-256 of the token's text, as `printf %s TOKEN |
/// sha256sum` prints it; stores keep only these 32 bytes.
#[test]
fn token_digests_are_sha256_of_the_token_text() {
    let million_a = "a".repeat(1_000_000);
    let cases: [(&str, &str); 4] = [
        // FIPS 180-2 vectors: the empty message, one block, many blocks.
        (
            "",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            "abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            &million_a,
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        ),
        // A token as `token create` prints it.
        (
            "dapi_q5Vb0Lr3kT7xYzW2mN8pA4sD6fG1hJ9uE0cR3vB5nXo",
            "4b4863038313f542d7253bb3feec4c71a1d862691f316c43b4987b22e51bfcda",
        ),
    ];
    for (token, hex) in cases {
        assert_eq!(
            hex::encode(auth::digest(token)),
            hex,
            "digest of a {}-byte token",
            token.len()
        );
    }
}

/// A cursor is unpadded base64url of the version byte 1 and the task id's 16
/// bytes; cursors handed out by any earlier release decode to the same id.
#[test]
fn cursors_keep_their_encoding() {
    let cases = [
        // A task id (UUIDv7) and both ends of the keyset range.
        (
            0x0190a5f0_0000_7000_8000_000000000001,
            "AQGQpfAAAHAAgAAAAAAAAAE",
        ),
        (0, "AQAAAAAAAAAAAAAAAAAAAAA"),
        (u128::MAX, "Af____________________8"),
    ];
    for (id, cursor) in cases {
        let id = TaskId::from_u128(id);
        assert_eq!(encode_cursor(id), cursor);
        assert_eq!(decode_cursor(cursor), Some(id), "{cursor}");
    }
}

/// Strings that are not exactly what `encode_cursor` produces stay refused:
/// padding, the standard alphabet, non-zero trailing bits, another length or
/// version. (A decoder that grew lenient would accept two spellings of one
/// position.)
#[test]
fn cursors_refuse_other_spellings() {
    let pattern = regex_lite::Regex::new(CURSOR_PATTERN).unwrap();
    for bad in [
        "AQGQpfAAAHAAgAAAAAAAAAE=",
        "Af////////////////////8",
        "Af____________________9",
        "AQGQpfAAAHAAgAAAAAAAAA",
        "AgGQpfAAAHAAgAAAAAAAAAE",
        "AQGQpfAAAHAAgAAAAAAAAAEA",
        "",
    ] {
        assert_eq!(decode_cursor(bad), None, "{bad:?}");
        assert!(!pattern.is_match(bad), "{bad:?}");
    }
}

/// A new token is `dapi_` and 32 random bytes in unpadded base64url: 43
/// characters, the last one carrying two zero bits.
#[test]
fn new_tokens_are_unpadded_base64url_of_32_bytes() {
    let last = regex_lite::Regex::new("^dapi_[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$").unwrap();
    for _ in 0..64 {
        let token = auth::generate_token();
        assert!(last.is_match(&token), "{token}");
    }
}
