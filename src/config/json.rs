//! Reading `appsettings*.json` the way .NET's JSON configuration provider does.
//!
//! .NET skips `//` and `/* */` comments, allows trailing commas and a UTF-8 byte-order mark, so
//! files written for the sample may contain them: [`parse_document`] blanks those out (keeping
//! every line and column where it was, so serde_json's positions stay right) and parses the rest
//! into [`Json`], which keeps object members in file order and keeps duplicates, so the loader can
//! refuse `Database` and `database` in one section as .NET does.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their members in order, duplicates included.
#[derive(Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Shows only the kind of value: a configuration file may hold a password.
impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl Json {
    /// What kind of value this is, for "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// Parses a configuration file's bytes.
///
/// Errors are serde_json's messages, which carry the line and column and never the file's text.
pub(crate) fn parse_document(bytes: &[u8]) -> Result<Json, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let cleaned = blank_comments_and_trailing_commas(bytes)?;
    serde_json::from_slice::<Json>(&cleaned).map_err(|e| e.to_string())
}

/// Replaces comments and trailing commas by spaces (newlines inside block comments are kept).
fn blank_comments_and_trailing_commas(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = input.to_vec();
    let mut i = 0;
    let mut in_string = false;
    // Position of the last ',' outside strings not yet followed by a value.
    let mut pending_comma: Option<usize> = None;
    let (mut line, mut col) = (1usize, 1usize);
    let advance = |b: u8, line: &mut usize, col: &mut usize| {
        if b == b'\n' {
            *line += 1;
            *col = 1;
        } else {
            *col += 1;
        }
    };
    while i < out.len() {
        let b = out[i];
        if in_string {
            if b == b'\\' && i + 1 < out.len() {
                advance(b, &mut line, &mut col);
                i += 1;
                advance(out[i], &mut line, &mut col);
            } else {
                if b == b'"' {
                    in_string = false;
                }
                advance(b, &mut line, &mut col);
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                pending_comma = None;
            }
            b'/' if out.get(i + 1) == Some(&b'/') => {
                while i < out.len() && out[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                    col += 1;
                }
                continue;
            }
            b'/' if out.get(i + 1) == Some(&b'*') => {
                let (start_line, start_col) = (line, col);
                let mut j = i + 2;
                loop {
                    if j + 1 >= out.len() {
                        return Err(format!(
                            "unterminated /* comment starting at line {start_line} column {start_col}"
                        ));
                    }
                    if out[j] == b'*' && out[j + 1] == b'/' {
                        break;
                    }
                    j += 1;
                }
                for c in &mut out[i..j + 2] {
                    advance(*c, &mut line, &mut col);
                    if *c != b'\n' && *c != b'\r' {
                        *c = b' ';
                    }
                }
                i = j + 2;
                continue;
            }
            b',' => pending_comma = Some(i),
            b'}' | b']' => {
                if let Some(p) = pending_comma.take() {
                    out[p] = b' ';
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => pending_comma = None,
        }
        advance(b, &mut line, &mut col);
        i += 1;
    }
    Ok(out)
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            members.push((k, v));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(j: Json) -> Vec<(String, Json)> {
        match j {
            Json::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn dotnet_json_extras_are_accepted() {
        let text = "\u{feff}{\n  // a comment\n  \"A\": \"x // not a comment\", /* block\n  comment */\n  \"B\": [1, 2,],\n  \"C\": \"\\\"/*\\\"\",\n}\n";
        let m = obj(parse_document(text.as_bytes()).unwrap());
        assert_eq!(m.len(), 3);
        assert!(
            m[0] == (
                "A".to_owned(),
                Json::String("x // not a comment".to_owned())
            )
        );
        assert!(m[2] == ("C".to_owned(), Json::String("\"/*\"".to_owned())));
    }

    #[test]
    fn duplicates_and_order_are_kept() {
        let m = obj(parse_document(br#"{"b": 1, "a": 2, "B": 3, "b": 4}"#).unwrap());
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "B", "b"]);
    }

    #[test]
    fn errors_keep_line_and_column() {
        let e = parse_document(b"{\n  // c\n  \"A\": 1\n  \"B\": 2\n}").unwrap_err();
        assert!(e.contains("line 4 column 3"), "{e}");
        let e = parse_document(b"{\n /* open").unwrap_err();
        assert!(
            e.contains("unterminated") && e.contains("line 2 column 2"),
            "{e}"
        );
        assert!(parse_document(b"").is_err());
        assert!(parse_document(b"{\"a\": 1,, }").is_err());
    }
}
