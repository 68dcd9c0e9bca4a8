//! A generator of synthetic Chinese patient records with ground truth, for linkage tests and
//! benchmarks: persons with realistic name frequencies (common names collide, as 张伟 does),
//! valid GB 11643 ID numbers, phones and addresses, each seen by one to four source systems that
//! recorded them with the errors real systems make: missing or mistyped ID numbers, old 15-digit
//! numbers, homophone and traditional-character names, dialect confusions (n/l, zh/z, ing/in),
//! swapped day and month, changed phones, moves. Twins (same family, birth date and address,
//! different given name and ID) are the hard negatives. Synthetic only: no real person.

use std::collections::HashSet;

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use super::record::Record;

/// Common family names, most frequent first (weights follow their rough shares).
const FAMILY: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "高",
    "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾", "肖", "田", "董", "袁", "潘", "于",
    "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁", "任", "沈", "姚", "卢", "姜", "崔", "钟", "谭", "陆",
    "汪", "范", "金", "石", "廖", "贾", "夏", "韦", "付", "方", "白", "邹", "孟", "熊", "秦", "邱", "江", "尹", "薛",
    "闫", "段", "雷", "侯", "龙", "史", "陶", "黎", "贺", "顾", "毛", "郝", "龚", "邵", "万", "钱", "严", "覃", "武",
    "戴", "莫", "孔", "向", "汤", "欧阳", "司马", "诸葛",
];

/// Characters of given names (with homophones among them: 芳/方, 静/晶, 丽/莉, 军/君, …).
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀", "霞",
    "平", "刚", "桂", "英", "华", "红", "玉", "兰", "萍", "鹏", "辉", "玲", "飞", "建", "国", "文", "斌", "宇", "浩",
    "凯", "健", "俊", "帆", "帅", "旭", "宁", "林", "琳", "龙", "亮", "晶", "婷", "雪", "慧", "莉", "君", "方", "晓",
    "燕", "倩", "颖", "欣", "佳", "梅", "琴", "云", "峰", "波", "宏", "志", "海", "春", "秋", "冬", "新", "东", "南",
    "北", "阳", "光", "荣", "成", "诚", "晨", "辰", "振", "震", "正", "政", "思", "丝", "嘉", "家", "子", "紫", "梓",
    "一", "依", "怡", "宜", "逸", "博", "波", "晴", "清", "青", "庆", "琪", "奇", "淇", "雨", "语", "宇", "瑜", "玉",
    "昊", "皓", "浩", "瑞", "睿", "蕊", "欢", "焕", "娇", "骄", "楠", "兰", "岚", "澜", "朗", "浪", "乐", "磊", "蕾",
    "力", "丽", "立", "莉", "利", "丹", "单", "生", "升", "胜", "声", "山", "杉", "珊", "衫", "舒", "淑", "书", "树",
    "中", "忠", "钟", "宗", "增", "曾", "真", "珍",
];

/// Simplified → traditional forms some systems (and Hong Kong, Macao, Taiwan residents' papers)
/// write.
const TRADITIONAL: &[(&str, &str)] = &[
    ("张", "張"),
    ("刘", "劉"),
    ("陈", "陳"),
    ("杨", "楊"),
    ("黄", "黃"),
    ("赵", "趙"),
    ("吴", "吳"),
    ("孙", "孫"),
    ("马", "馬"),
    ("郑", "鄭"),
    ("谢", "謝"),
    ("许", "許"),
    ("韩", "韓"),
    ("冯", "馮"),
    ("邓", "鄧"),
    ("伟", "偉"),
    ("丽", "麗"),
    ("军", "軍"),
    ("华", "華"),
    ("国", "國"),
    ("东", "東"),
    ("红", "紅"),
    ("兰", "蘭"),
    ("鹏", "鵬"),
    ("辉", "輝"),
    ("玲", "玲"),
    ("飞", "飛"),
    ("宁", "寧"),
    ("龙", "龍"),
    ("晓", "曉"),
    ("颖", "穎"),
    ("庆", "慶"),
    ("乐", "樂"),
    ("胜", "勝"),
    ("声", "聲"),
    ("书", "書"),
    ("树", "樹"),
    ("钟", "鍾"),
    ("珍", "珍"),
    ("凯", "凱"),
];

/// Districts (GB/T 2260 codes) the synthetic residents live in, several per city, several cities.
const DIVISIONS: &[&str] = &[
    "110101", "110102", "110105", "110106", "110108", "310101", "310104", "310105", "310106", "310115", "440103",
    "440104", "440105", "440106", "440111", "510104", "510105", "510106", "510107", "510108", "330102", "330105",
    "330106", "330108", "420102", "420103", "420104", "420106", "320102", "320104", "320105", "320106", "370102",
    "370103", "370104", "410102", "410103", "410104", "430102", "430103", "430104", "610102", "610103", "610104",
];

const STREETS: &[&str] = &[
    "人民路",
    "解放路",
    "中山路",
    "建设路",
    "和平路",
    "新华路",
    "胜利路",
    "朝阳路",
    "光明路",
    "文化路",
    "青年路",
    "长江路",
    "黄河路",
    "北京路",
    "南京路",
    "东风路",
    "红旗路",
    "幸福路",
    "团结路",
    "工业路",
];

const TOWNS: &[&str] = &[
    "东城街道",
    "西城街道",
    "南湖街道",
    "北苑街道",
    "城关镇",
    "新华街道",
    "朝阳街道",
    "和平街道",
    "临江街道",
    "高新街道",
];

/// One generated record and the person it belongs to.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub person: u32,
    pub record: Record,
}

/// Generator settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Records to produce (persons are added until there are this many records).
    pub records: usize,
    pub seed: u64,
}

struct Person {
    family: String,
    given: String,
    birth: (u32, u32, u32),
    sex: char,
    id: String,
    phone: String,
    division: &'static str,
    address: String,
    town: &'static str,
}

fn zipf_index(rng: &mut StdRng, n: usize) -> usize {
    // P(i) ∝ 1 / (i + 3): the top names are common, the tail long.
    let total: f64 = (0..n).map(|i| 1.0 / (i as f64 + 3.0)).sum();
    let mut x = rng.random::<f64>() * total;
    for i in 0..n {
        x -= 1.0 / (i as f64 + 3.0);
        if x <= 0.0 {
            return i;
        }
    }
    n - 1
}

/// A new person's ID number: unique, as real ones are (the sequence code is allocated per
/// division and birth date, so two persons born on one day in one district never share it).
fn id_number(
    rng: &mut StdRng,
    issued: &mut HashSet<String>,
    division: &str,
    (y, m, d): (u32, u32, u32),
    sex: char,
) -> String {
    loop {
        let mut seq: u32 = rng.random_range(0..500) * 2;
        if sex == 'M' {
            seq += 1;
        }
        let body = format!("{division}{y:04}{m:02}{d:02}{seq:03}");
        let check = crypto::idnum::check_character(&body).unwrap_or('0');
        let id = format!("{body}{check}");
        if issued.insert(id.clone()) {
            return id;
        }
    }
}

fn phone(rng: &mut StdRng) -> String {
    let prefix =
        ["138", "139", "137", "136", "135", "150", "151", "152", "186", "187", "188", "158", "159", "177", "199"];
    format!("{}{:08}", prefix.choose(rng).unwrap_or(&"138"), rng.random_range(0..100_000_000u32))
}

fn new_person(rng: &mut StdRng, issued: &mut HashSet<String>) -> Person {
    let family = FAMILY[zipf_index(rng, FAMILY.len())].to_string();
    let mut given = GIVEN[zipf_index(rng, GIVEN.len())].to_string();
    if rng.random_bool(0.7) {
        given.push_str(GIVEN.choose(rng).unwrap_or(&"明"));
    }
    let y = rng.random_range(1930..=2024);
    let m = rng.random_range(1..=12);
    let d = rng.random_range(1..=28);
    let sex = if rng.random_bool(0.5) { 'M' } else { 'F' };
    let division = *DIVISIONS.choose(rng).unwrap_or(&"110101");
    Person {
        id: id_number(rng, issued, division, (y, m, d), sex),
        phone: phone(rng),
        address: address(rng),
        town: TOWNS.choose(rng).unwrap_or(&"城关镇"),
        family,
        given,
        birth: (y, m, d),
        sex,
        division,
    }
}

fn address(rng: &mut StdRng) -> String {
    format!(
        "{}{}号{}栋{}室",
        STREETS.choose(rng).unwrap_or(&"人民路"),
        rng.random_range(1..400),
        rng.random_range(1..30),
        rng.random_range(101..2500)
    )
}

fn pinyin_of(c: &str) -> Option<&'static str> {
    use pinyin::ToPinyin;
    c.chars().next()?.to_pinyin().map(|p| p.plain())
}

/// Another character of the list read the same way (a homophone), or read the same after the
/// dialect folding when `folded`.
fn sound_alike(rng: &mut StdRng, c: &str, folded: bool) -> Option<&'static str> {
    let key = |s: &str| pinyin_of(s).map(|p| if folded { super::record::fold_syllable(p) } else { p.to_string() });
    let want = key(c)?;
    let options: Vec<&'static str> =
        GIVEN.iter().chain(FAMILY.iter()).copied().filter(|o| *o != c && key(o).as_deref() == Some(&want)).collect();
    options.choose(rng).copied()
}

fn replace_one_char(rng: &mut StdRng, name: &str, folded: bool) -> String {
    let chars: Vec<String> = name.chars().map(String::from).collect();
    let i = rng.random_range(0..chars.len());
    match sound_alike(rng, &chars[i], folded) {
        Some(other) => chars.iter().enumerate().map(|(j, c)| if j == i { other } else { c.as_str() }).collect(),
        None => name.to_string(),
    }
}

fn traditional(name: &str) -> String {
    name.chars()
        .map(|c| {
            let s = c.to_string();
            TRADITIONAL.iter().find(|(a, _)| *a == s).map_or(s, |(_, t)| t.to_string())
        })
        .collect()
}

fn typo_digit(rng: &mut StdRng, s: &str) -> String {
    let mut b: Vec<u8> = s.bytes().collect();
    let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
    if let Some(&i) = digits.choose(rng) {
        let old = b[i];
        while b[i] == old {
            b[i] = b'0' + rng.random_range(0..10u8);
        }
    }
    String::from_utf8(b).unwrap_or_else(|_| s.to_string())
}

/// How one source system recorded a person.
fn observe(rng: &mut StdRng, p: &Person, first: bool) -> Record {
    let (y, m, d) = p.birth;
    let mut family = p.family.clone();
    let mut given = p.given.clone();
    let mut birth = format!("{y:04}{m:02}{d:02}");
    let mut id = Some(p.id.clone());
    let mut phone = Some(p.phone.clone());
    let mut division = p.division.to_string();
    let mut address = Some(p.address.clone());
    let mut town = Some(p.town.to_string());
    // The first record of a person is the cleanest (as from the ID card); later ones drift.
    let err = if first { 0.3 } else { 1.0 };
    if rng.random_bool(0.25 * err) {
        id = None;
    } else if y < 2000 && rng.random_bool(0.05 * err) {
        // An old 15-digit number: two-digit year, no check character.
        id = Some(format!("{}{}{}", &p.id[..6], &p.id[8..14], &p.id[14..17]));
    } else if rng.random_bool(0.03 * err) {
        id = id.map(|i| typo_digit(rng, &i));
    }
    if rng.random_bool(0.08 * err) {
        given = replace_one_char(rng, &given, false);
    }
    if rng.random_bool(0.03 * err) {
        given = replace_one_char(rng, &given, true);
    }
    if rng.random_bool(0.04 * err) {
        family = traditional(&family);
        given = traditional(&given);
    }
    if rng.random_bool(0.02 * err) {
        family = replace_one_char(rng, &family, false);
    }
    if d <= 12 && rng.random_bool(0.03 * err) {
        birth = format!("{y:04}{d:02}{m:02}");
    } else if rng.random_bool(0.03 * err) {
        birth = typo_digit(rng, &birth);
    }
    if rng.random_bool(0.2 * err) {
        phone = Some(self::phone(rng));
    } else if rng.random_bool(0.15 * err) {
        phone = None;
    }
    if rng.random_bool(0.1 * err) {
        division = DIVISIONS.choose(rng).unwrap_or(&"110101").to_string();
        address = Some(self::address(rng));
        town = TOWNS.choose(rng).map(|t| t.to_string());
    } else if rng.random_bool(0.15 * err) {
        address = None;
        town = None;
    }
    Record {
        family: Some(family),
        given: Some(given),
        birth_date: (!rng.random_bool(0.03 * err)).then_some(birth),
        sex: (!rng.random_bool(0.02)).then_some(p.sex),
        id_number: id,
        phone,
        street_number: None,
        address,
        locality: town,
        postcode: None,
        region: Some(division),
    }
}

/// Generates records, shuffled (as they arrive from many systems), with their true persons.
pub fn generate(settings: Settings) -> Vec<Synthetic> {
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut out: Vec<Synthetic> = Vec::with_capacity(settings.records + 4);
    let mut person_id = 0u32;
    let mut issued = HashSet::new();
    while out.len() < settings.records {
        let p = new_person(&mut rng, &mut issued);
        // Records per person: 1 (45%), 2 (30%), 3 (17%), 4 (8%).
        let copies = match rng.random_range(0..100) {
            0..45 => 1,
            45..75 => 2,
            75..92 => 3,
            _ => 4,
        };
        for k in 0..copies {
            out.push(Synthetic { person: person_id, record: observe(&mut rng, &p, k == 0) });
        }
        person_id += 1;
        // A twin now and then: same family, birth date and home, another given name and ID.
        if rng.random_bool(0.01) {
            let mut twin = new_person(&mut rng, &mut issued);
            twin.family = p.family.clone();
            twin.birth = p.birth;
            twin.division = p.division;
            twin.address = p.address.clone();
            twin.town = p.town;
            twin.phone = p.phone.clone();
            issued.remove(&twin.id);
            twin.id = id_number(&mut rng, &mut issued, twin.division, twin.birth, twin.sex);
            out.push(Synthetic { person: person_id, record: observe(&mut rng, &twin, true) });
            person_id += 1;
        }
    }
    out.truncate(settings.records);
    // Shuffle: records arrive interleaved from many systems.
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_persons_repeat() {
        let data = generate(Settings { records: 2000, seed: 1 });
        assert_eq!(data.len(), 2000);
        let persons: std::collections::HashSet<u32> = data.iter().map(|s| s.person).collect();
        assert!(persons.len() < 1500 && persons.len() > 800, "{} persons", persons.len());
        let valid = data
            .iter()
            .filter_map(|s| s.record.id_number.as_deref())
            .filter(|id| crypto::idnum::normalize(id).is_ok())
            .count();
        assert!(valid > 1300, "{valid} valid ID numbers");
        // An ID number belongs to one person (the twins of a family included).
        let mut owner: std::collections::HashMap<String, u32> = Default::default();
        for s in &generate(Settings { records: 50_000, seed: 2 }) {
            if let Some(id) = s.record.id_number.as_deref().filter(|id| crypto::idnum::normalize(id).is_ok()) {
                let first = *owner.entry(id.to_string()).or_insert(s.person);
                assert_eq!(first, s.person, "{id} issued twice");
            }
        }
        // Deterministic for a seed.
        assert_eq!(
            generate(Settings { records: 50, seed: 9 })[7].record,
            generate(Settings { records: 50, seed: 9 })[7].record
        );
    }

    #[test]
    fn sound_alikes_read_the_same() {
        let mut rng = StdRng::seed_from_u64(3);
        let other = sound_alike(&mut rng, "芳", false).unwrap();
        assert_eq!(pinyin_of(other), Some("fang"));
        assert_eq!(traditional("张伟"), "張偉");
    }
}
