//! The HL7 v2 message: segments split on CR (LF and CRLF tolerated), fields, repetitions,
//! components and subcomponents split on the delimiters MSH-1 and MSH-2 declare, escape
//! sequences, the MSH-18 character set, and writing a message back out.

use crate::{Hl7Error, SUPPORTED_VERSIONS};

/// The delimiters of one message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters { field: '|', component: '^', repetition: '~', escape: Some('\\'), subcomponent: '&' }
    }
}

impl Delimiters {
    /// MSH-2 as written: component, repetition, escape, subcomponent.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        s.push(self.component);
        s.push(self.repetition);
        if let Some(e) = self.escape {
            s.push(e);
        }
        s.push(self.subcomponent);
        s
    }
}

/// A character set named by MSH-18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    /// GB 18030 (a superset of GBK and GB 2312, so those decode with it too).
    Gb18030,
    /// ISO 8859-1 (decoded as its superset windows-1252, as browsers do).
    Latin1,
}

impl Charset {
    /// The charset for an MSH-18 value; an empty value is UTF-8 on this platform.
    pub fn from_msh18(value: &str) -> Result<Charset, Hl7Error> {
        let v = value.trim().to_ascii_uppercase();
        match v.as_str() {
            "" | "UNICODE UTF-8" | "UTF-8" | "UTF8" | "ASCII" | "UNICODE" => Ok(Charset::Utf8),
            "GB 18030-2000" | "GB18030" | "GB 18030" | "GBK" | "CHINESE" | "GB2312" | "GB 2312" => Ok(Charset::Gb18030),
            "8859/1" | "ISO-8859-1" | "ISO IR100" => Ok(Charset::Latin1),
            _ => Err(Hl7Error::UnsupportedCharset(value.trim().to_string())),
        }
    }

    fn encoding(self) -> &'static encoding_rs::Encoding {
        match self {
            Charset::Utf8 => encoding_rs::UTF_8,
            Charset::Gb18030 => encoding_rs::GB18030,
            Charset::Latin1 => encoding_rs::WINDOWS_1252,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Gb18030 => "GB 18030",
            Charset::Latin1 => "ISO 8859-1",
        }
    }

    /// Decodes bytes, refusing malformed input rather than replacing it.
    pub fn decode(self, bytes: &[u8]) -> Result<String, Hl7Error> {
        self.encoding()
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|s| s.into_owned())
            .ok_or_else(|| Hl7Error::InvalidText { charset: self.name().to_string() })
    }

    /// Encodes text (characters the charset cannot hold become numeric references, which
    /// never happens for UTF-8 and GB 18030).
    pub fn encode(self, text: &str) -> Vec<u8> {
        self.encoding().encode(text).0.into_owned()
    }
}

/// One segment: `fields[0]` is the segment id and `fields[n]` is field n, escaped as sent. For
/// MSH, `fields[1]` is the field separator itself, so MSH-n is `fields[n]` as in the standard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub fields: Vec<String>,
}

impl Segment {
    /// A segment from its id and its fields, already escaped (see [`escape`]).
    pub fn new(id: &str, fields: Vec<String>) -> Segment {
        let mut all = Vec::with_capacity(fields.len() + 1);
        all.push(id.to_string());
        all.extend(fields);
        Segment { fields: all }
    }

    pub fn id(&self) -> &str {
        &self.fields[0]
    }

    /// Field `n` as sent (escaped), empty when absent.
    pub fn raw(&self, n: usize) -> &str {
        self.fields.get(n).map_or("", String::as_str)
    }
}

/// One repetition of a field, read with the message's delimiters.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: Delimiters,
}

impl<'a> Field<'a> {
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The whole value, unescaped (components stay joined by the component separator).
    pub fn value(&self) -> String {
        unescape(self.raw, &self.delimiters)
    }

    /// Component `c` (1-based), subcomponents joined, unescaped; empty when absent.
    pub fn component(&self, c: usize) -> String {
        unescape(nth(self.raw, self.delimiters.component, c), &self.delimiters)
    }

    /// Subcomponent `s` of component `c` (both 1-based), unescaped; empty when absent.
    pub fn subcomponent(&self, c: usize, s: usize) -> String {
        let component = nth(self.raw, self.delimiters.component, c);
        unescape(nth(component, self.delimiters.subcomponent, s), &self.delimiters)
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// The `n`th (1-based) part of `s` split on `separator`, empty when absent.
fn nth(s: &str, separator: char, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    s.split(separator).nth(n - 1).unwrap_or("")
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub delimiters: Delimiters,
    pub charset: Charset,
    pub segments: Vec<Segment>,
}

impl Message {
    /// Parses a message from bytes in the character set its MSH-18 names (UTF-8 by default).
    pub fn parse(bytes: &[u8]) -> Result<Message, Hl7Error> {
        Message::parse_with_default(bytes, Charset::Utf8)
    }

    /// Parses a message whose character set, when MSH-18 is empty, is `default` (e.g. the
    /// `charset` of an HTTP Content-Type). A character set in MSH-18 always wins.
    pub fn parse_with_default(bytes: &[u8], default: Charset) -> Result<Message, Hl7Error> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).ok_or(Hl7Error::Empty)?;
        let bytes = &bytes[start..];
        // The MSH segment is read as bytes first to learn the character set: its delimiters
        // and MSH-18 are ASCII in every charset this reads.
        let msh_end = bytes.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(bytes.len());
        let msh = &bytes[..msh_end];
        if !msh.starts_with(b"MSH") {
            let found = String::from_utf8_lossy(&msh[..msh.len().min(10)]).into_owned();
            return Err(Hl7Error::MissingMsh { found });
        }
        let separator = *msh.get(3).ok_or_else(|| Hl7Error::BadEncodingCharacters("MSH has no MSH-1".into()))?;
        if !separator.is_ascii() || separator.is_ascii_alphanumeric() || separator.is_ascii_whitespace() {
            return Err(Hl7Error::BadEncodingCharacters(format!(
                "MSH-1 field separator must be an ASCII punctuation character, not byte 0x{separator:02X}"
            )));
        }
        let msh18 = msh.split(|&b| b == separator).nth(17).unwrap_or(b"");
        let msh18 = msh18.split(|&b| b == b'~' || b == b'^').next().unwrap_or(b"");
        let declared = String::from_utf8_lossy(msh18).trim().to_string();
        let charset = if declared.is_empty() { default } else { Charset::from_msh18(&declared)? };
        let text = charset.decode(bytes)?;
        let message = Message::parse_text(&text, charset)?;
        // A multi-byte character can swallow a delimiter byte; the decoded header must still
        // name the character set the bytes were decoded with.
        let decoded = message.get("MSH-18-1").unwrap_or_default();
        if !(decoded.trim().is_empty() && declared.is_empty()) && Charset::from_msh18(&decoded) != Ok(charset) {
            return Err(Hl7Error::InvalidText { charset: charset.name().to_string() });
        }
        Ok(message)
    }

    /// Parses already-decoded text.
    pub fn parse_text(text: &str, charset: Charset) -> Result<Message, Hl7Error> {
        let text = text.trim_start();
        if text.is_empty() {
            return Err(Hl7Error::Empty);
        }
        if !text.starts_with("MSH") {
            return Err(Hl7Error::MissingMsh { found: text.chars().take(10).collect() });
        }
        let mut chars = text[3..].chars();
        let field = chars.next().ok_or_else(|| Hl7Error::BadEncodingCharacters("MSH has no MSH-1".into()))?;
        let encoding: String = chars.take_while(|&c| c != field && c != '\r' && c != '\n').collect();
        let delimiters = delimiters(field, &encoding)?;
        let mut segments = Vec::new();
        for (index, line) in text.split(['\r', '\n']).filter(|l| !l.trim().is_empty()).enumerate() {
            let mut fields: Vec<String> = line.split(field).map(str::to_string).collect();
            let id = &fields[0];
            if id.chars().count() != 3 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(Hl7Error::BadSegment { index: index + 1, name: id.chars().take(10).collect() });
            }
            if index == 0 {
                fields.insert(1, field.to_string());
            }
            segments.push(Segment { fields });
        }
        Ok(Message { delimiters, charset, segments })
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id() == id)
    }

    /// The repetitions of field `n` of segment `s`.
    pub fn repetitions<'a>(&'a self, segment: &'a Segment, n: usize) -> Vec<Field<'a>> {
        let raw = segment.raw(n);
        // MSH-2 holds the repetition character itself: it never repeats.
        if segment.id() == "MSH" && n <= 2 {
            return vec![Field { raw, delimiters: self.delimiters }];
        }
        raw.split(self.delimiters.repetition).map(|raw| Field { raw, delimiters: self.delimiters }).collect()
    }

    /// The repetitions of a field named like `PID-3` (first segment with that id).
    pub fn field_repetitions(&self, path: &str) -> Vec<Field<'_>> {
        let Some((id, rest)) = path.split_once('-') else { return Vec::new() };
        let (Some(segment), Ok(n)) = (self.segment(id), rest.parse::<usize>()) else { return Vec::new() };
        self.repetitions(segment, n).into_iter().filter(|f| !f.is_empty()).collect()
    }

    /// A value by path: `PID-5` (the first repetition, unescaped), `PID-5-1` (component),
    /// `PID-11-1-2` (subcomponent), `PID-3(2)-1` (second repetition). `None` when the segment
    /// is absent or the value is empty.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut parts = path.split('-');
        let id = parts.next()?;
        let field_part = parts.next()?;
        let (field, repetition) = match field_part.split_once('(') {
            Some((f, r)) => (f.parse::<usize>().ok()?, r.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (field_part.parse::<usize>().ok()?, 1),
        };
        let component = parts.next().map(str::parse::<usize>).transpose().ok()?;
        let subcomponent = parts.next().map(str::parse::<usize>).transpose().ok()?;
        let segment = self.segment(id)?;
        if id == "MSH" && field <= 2 {
            // The delimiters themselves: never split or unescaped.
            return Some(segment.raw(field).to_string()).filter(|v| !v.is_empty());
        }
        let repetitions = self.repetitions(segment, field);
        let f = repetitions.get(repetition.checked_sub(1)?)?;
        let value = match (component, subcomponent) {
            (None, _) => f.value(),
            (Some(c), None) => f.component(c),
            (Some(c), Some(s)) => f.subcomponent(c, s),
        };
        (!value.is_empty()).then_some(value)
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> String {
        self.get("MSH-10").unwrap_or_default()
    }

    /// MSH-12, checked against the versions this crate reads.
    pub fn version(&self) -> Result<String, Hl7Error> {
        let version = self.get("MSH-12-1").unwrap_or_default();
        if SUPPORTED_VERSIONS.contains(&version.as_str()) {
            Ok(version)
        } else {
            Err(Hl7Error::UnsupportedVersion(version))
        }
    }

    /// The message as text, segments ended by CR.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let field = self.delimiters.field.to_string();
        for segment in &self.segments {
            if segment.id() == "MSH" {
                // MSH-1 is the separator itself, written once.
                out.push_str("MSH");
                out.push_str(&field);
                out.push_str(&segment.fields[2..].join(&field));
            } else {
                out.push_str(&segment.fields.join(&field));
            }
            out.push('\r');
        }
        out
    }

    /// The message as bytes in its character set.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.charset.encode(&self.to_text())
    }
}

fn delimiters(field: char, encoding: &str) -> Result<Delimiters, Hl7Error> {
    let chars: Vec<char> = encoding.chars().collect();
    if !(3..=4).contains(&chars.len()) {
        return Err(Hl7Error::BadEncodingCharacters(format!(
            "MSH-2 must hold 4 characters (component, repetition, escape, subcomponent, usually ^~\\&), not '{encoding}'"
        )));
    }
    let (component, repetition) = (chars[0], chars[1]);
    let (escape, subcomponent) = if chars.len() == 4 { (Some(chars[2]), chars[3]) } else { (None, chars[2]) };
    let mut all = vec![field, component, repetition, subcomponent];
    all.extend(escape);
    if all.iter().any(|c| c.is_alphanumeric() || c.is_whitespace()) {
        return Err(Hl7Error::BadEncodingCharacters(format!(
            "delimiters must be punctuation, not letters, digits or spaces: '{field}{encoding}'"
        )));
    }
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != all.len() {
        return Err(Hl7Error::BadEncodingCharacters(format!("delimiters must all differ: '{field}{encoding}'")));
    }
    Ok(Delimiters { field, component, repetition, escape, subcomponent })
}

/// Resolves escape sequences: `\F\ \S\ \T\ \R\ \E\` to the delimiters, `\Xhh..\` to the bytes
/// they name (as UTF-8, else as ISO 8859-1), `\.br\` to a line break. Other sequences
/// (formatting such as `\H\`) and unterminated ones are kept as sent.
pub fn unescape(s: &str, d: &Delimiters) -> String {
    let Some(esc) = d.escape else { return s.to_string() };
    if !s.contains(esc) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let body = &after[..end];
        match body {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\n'),
            _ => match hex_bytes(body) {
                Some(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => out.push_str(&text),
                    // Not UTF-8: single bytes of ISO 8859-1, as other HL7 libraries read them.
                    Err(e) => out.extend(e.into_bytes().into_iter().map(char::from)),
                },
                None => {
                    out.push(esc);
                    out.push_str(body);
                    out.push(esc);
                }
            },
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    out
}

fn hex_bytes(body: &str) -> Option<Vec<u8>> {
    let hex = body.strip_prefix('X')?;
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

/// Escapes the delimiters in a value so it can be written as one component.
pub fn escape(s: &str, d: &Delimiters) -> String {
    let Some(esc) = d.escape else { return s.to_string() };
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let code = if c == esc {
            Some('E')
        } else if c == d.field {
            Some('F')
        } else if c == d.component {
            Some('S')
        } else if c == d.subcomponent {
            Some('T')
        } else if c == d.repetition {
            Some('R')
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push(esc);
                out.push(code);
                out.push(esc);
            }
            // Segment separators inside a value would end the segment.
            None if c == '\r' || c == '\n' => {
                out.push(esc);
                out.push_str(".br");
                out.push(esc);
            }
            None => out.push(c),
        }
    }
    out
}
