//! The standard's own string formats, checked by the validator: `decimal`, `uscc` (统一社会信用代码)
//! and `cn-resident-id` (公民身份号码), each with its check character.

/// The 31 characters of a unified social credit code, in value order (GB 32100-2015:
/// digits and capitals without I, O, Z, S, V).
const USCC_CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// Whether `code` is an 18-character unified social credit code whose last character is the
/// correct check character.
pub fn is_uscc(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() != 18 || !b[2..8].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut values = [0u32; 18];
    for (slot, c) in values.iter_mut().zip(b) {
        match USCC_CHARS.iter().position(|x| x == c) {
            Some(v) => *slot = v as u32,
            None => return false,
        }
    }
    let sum: u32 = values[..17].iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
    let check = (31 - sum % 31) % 31;
    values[17] == check
}

/// Appends the check character to a 17-character unified social credit code body (for test data
/// and examples).
pub fn uscc_with_check(body: &str) -> Option<String> {
    let b = body.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut sum = 0;
    for (c, w) in b.iter().zip(USCC_WEIGHTS) {
        sum += USCC_CHARS.iter().position(|x| x == c)? as u32 * w;
    }
    let check = USCC_CHARS[((31 - sum % 31) % 31) as usize];
    Some(format!("{body}{}", char::from(check)))
}

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// Whether `id` is an 18-character resident identity number (GB 11643-1999) with a valid
/// birth date and check character (ISO 7064 MOD 11-2).
pub fn is_cn_resident_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let birth = format!("{}-{}-{}", &id[6..10], &id[10..12], &id[12..14]);
    if crate::value::Date::parse(&birth).is_none() {
        return false;
    }
    let sum: u32 = b[..17]
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    b[17] == ID_CHECK[(sum % 11) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uscc_check_character() {
        // Published codes: 中国移动通信集团有限公司, 华为技术有限公司.
        assert!(is_uscc("91110000710925243K"));
        assert!(is_uscc("914403001922038216"));
        assert!(!is_uscc("914403001922038217"), "wrong check character");
        assert!(!is_uscc("91440300192203821"), "17 characters");
        assert!(!is_uscc("9144030019220382I6"), "I is not in the alphabet");
        assert_eq!(uscc_with_check("91440605MA4W0XNF3").as_deref().map(is_uscc), Some(true));
    }

    #[test]
    fn resident_id_check_character() {
        // The standard's own example (GB 11643-1999 annex).
        assert!(is_cn_resident_id("11010519491231002X"));
        assert!(!is_cn_resident_id("110105194912310021"));
        assert!(!is_cn_resident_id("11010519491331002X"), "month 13");
    }
}
