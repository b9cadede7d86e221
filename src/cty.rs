//! cty-msgpack: decoding what the Nomad client sends, encoding as it does.
//!
//! The Nomad client turns a plugin's agent config and each task's `config {}` block into a cty
//! value and serialises it with go-cty's `msgpack.Marshal` (protocol doc §5.1). This module reads
//! those bytes into an untyped [`Value`] tree and writes a [`Value`] back out byte-for-byte the
//! way go-cty would for concrete types, so tests and the emulated host can produce the exact
//! bytes a real client sends.
//!
//! Typing is not done here: a msgpack str is always [`Value::String`], even when it carries the
//! decimal text cty uses for numbers that are neither an exact int64 nor an exact float64. The
//! schema decoder (`crate::schema`) knows where a number is expected and accepts such strings
//! there.
//!
//! Decoding never panics: truncated input, trailing bytes, non-string map keys, invalid UTF-8,
//! foreign ext types and excessive nesting are reported as [`DecodeError`]s carrying the byte
//! offset of the offending item.

use std::fmt::Write as _;

/// Deepest container nesting [`decode`] accepts: this many arrays/maps inside one another.
///
/// Nomad configs nest a handful of levels; the limit bounds recursion on hostile input.
pub const MAX_DEPTH: usize = 64;

/// An untyped cty value as it appears on the msgpack wire.
///
/// Objects and maps both become [`Value::Map`] (in the order received); lists, sets and tuples
/// all become [`Value::List`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A null of any type (msgpack nil).
    Null,
    /// A value not known yet (cty's unknown ext, with or without refinements).
    Unknown,
    /// A bool.
    Bool(bool),
    /// A number carried in a msgpack int or float form.
    Number(Number),
    /// A msgpack str, or a bin holding valid UTF-8.
    String(String),
    /// A list, set or tuple.
    List(Vec<Value>),
    /// A map or object, keys in the order received.
    Map(Vec<(String, Value)>),
}

/// A cty number.
///
/// [`decode`] produces [`Number::Int`] for every integer that fits an `i64` (whatever its wire
/// width), [`Number::UInt`] only for uint64 values above `i64::MAX`, and [`Number::Float`] for
/// float32/float64. It never produces [`Number::Text`]; that variant exists so callers can
/// [`encode`] numbers cty would carry as decimal text (see [`Number::from_decimal`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer; values up to `i64::MAX` behave exactly like [`Number::Int`].
    UInt(u64),
    /// A binary floating-point number.
    Float(f64),
    /// Decimal text such as `"0.1"`, `"1e3"` or `"-12.50"`: the form cty uses for numbers that
    /// are not exactly an int64 or a float64.
    Text(String),
}

/// Why a byte string is not a single well-formed cty-msgpack value.
///
/// Every variant names the byte offset (from the start of the input) of the item at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside an item.
    #[error("cty-msgpack is truncated: the {what} at byte {offset} needs {needed} more byte(s)")]
    Truncated {
        /// Offset of the item that could not be completed.
        offset: usize,
        /// What was being read ("value", "str8", "array16 body", ...).
        what: &'static str,
        /// How many bytes past the end of the input the item would need.
        needed: usize,
    },
    /// Bytes follow the one top-level value.
    #[error("cty-msgpack has {count} trailing byte(s) after the value, starting at byte {offset}")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: usize,
        /// How many extra bytes there are.
        count: usize,
    },
    /// A map key is not a str (or UTF-8 bin).
    #[error("cty-msgpack map key at byte {offset} is {found}, expected a string")]
    NonStringKey {
        /// Offset of the key.
        offset: usize,
        /// The msgpack kind found instead.
        found: &'static str,
    },
    /// A str or bin is not valid UTF-8.
    #[error(
        "cty-msgpack string at byte {offset} is not valid UTF-8 (first bad byte at {bad_byte})"
    )]
    InvalidUtf8 {
        /// Offset of the string item.
        offset: usize,
        /// Offset of the first byte that breaks UTF-8.
        bad_byte: usize,
    },
    /// An ext type other than cty's unknown-value forms (types 0 and 12).
    #[error("cty-msgpack ext type {ext_type} at byte {offset} is not a cty unknown value")]
    UnsupportedExt {
        /// Offset of the ext item.
        offset: usize,
        /// The ext type found.
        ext_type: i8,
    },
    /// The reserved marker byte 0xc1, which no msgpack encoder emits.
    #[error("cty-msgpack byte {offset} is the reserved marker 0xc1")]
    ReservedMarker {
        /// Offset of the marker.
        offset: usize,
    },
    /// Containers are nested deeper than [`MAX_DEPTH`].
    #[error("cty-msgpack nests containers deeper than {max} levels at byte {offset}")]
    TooDeep {
        /// Offset of the container that would exceed the limit.
        offset: usize,
        /// The limit, [`MAX_DEPTH`].
        max: usize,
    },
}

impl Value {
    /// A short name of this value's kind for error messages: `"null"`, `"unknown value"`,
    /// `"bool"`, `"number"`, `"string"`, `"list"` or `"map"`. Never includes the value itself,
    /// so it is safe to show for secrets.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Unknown => "unknown value",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }
}

impl Number {
    /// Reads decimal number text the way cty would hold it, returning the form go-cty's encoder
    /// would pick: [`Number::Int`] if the value is exactly an int64 (`"1e3"` is 1000),
    /// otherwise [`Number::Float`] if it is exactly a float64 (`"0.5"`, `"9223372036854775808"`),
    /// otherwise [`Number::Text`] holding the plain decimal form Go's `big.Float.Text('f', -1)`
    /// prints (`"0.1"`, `"1.5e-1"` → `"0.15"`, no exponent, no redundant zeros).
    ///
    /// Accepted syntax: optional sign, digits with an optional fraction (`"5."` and `".5"` are
    /// fine), optional `e`/`E` exponent. Returns `None` for anything else, including `inf` and
    /// `NaN`. For absurd exponents (beyond ±10000) the text is kept as given rather than
    /// expanded.
    #[must_use]
    pub fn from_decimal(text: &str) -> Option<Number> {
        let decimal = Decimal::parse(text)?;
        if let Some(int) = decimal.to_i64() {
            return Some(Number::Int(int));
        }
        if let Some(float) = decimal.exact_f64() {
            return Some(Number::Float(float));
        }
        Some(Number::Text(
            decimal.to_plain().unwrap_or_else(|| text.to_owned()),
        ))
    }
}

/// Decodes exactly one cty-msgpack value occupying all of `bytes`.
///
/// Accepts every msgpack int and float width, str and UTF-8 bin for strings, and any ext of
/// type 0 (cty's plain unknown, `d4 00 00`) or type 12 (unknown with refinements; the payload is
/// not inspected) as [`Value::Unknown`].
///
/// # Errors
///
/// A [`DecodeError`] naming the byte offset when the input is empty or truncated, has trailing
/// bytes, uses a non-string map key, holds invalid UTF-8, uses another ext type or the reserved
/// marker 0xc1, or nests containers deeper than [`MAX_DEPTH`].
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(0)?;
    if reader.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            offset: reader.pos,
            count: bytes.len() - reader.pos,
        });
    }
    Ok(value)
}

/// Encodes `value` exactly as go-cty's `msgpack.Marshal` does for a value of concrete type.
///
/// * null → `c0`; unknown → `d4 00 00`; bools → `c2`/`c3`; strings in the smallest str form.
/// * Numbers follow go-cty's rule: exactly an int64 → the smallest int form (compact ints:
///   non-negative as fixint/uint8/16/32/64, negative as negative fixint/int8/16/32/64);
///   otherwise exactly a float64 (including ±infinity and large powers of two such as 2^63)
///   → float64 `cb`; otherwise the plain decimal text as a str. [`Number::Text`] is read with
///   [`Number::from_decimal`] first; text that is not a number at all is written as a str
///   unchanged. A NaN float (which cty cannot hold) is written as float64 NaN.
/// * Lists in the smallest array form.
/// * Every [`Value::Map`] is written with its keys sorted ascending by bytes. go-cty sorts
///   object attributes, and iterates map elements in key order too, so this matches both.
///
/// # Panics
///
/// If a string, list or map is longer than `u32::MAX` bytes or entries, which msgpack cannot
/// express. Config values never come near that.
#[must_use]
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Unknown => out.extend_from_slice(&[0xd4, 0x00, 0x00]),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Number(number) => encode_number(number, out),
        Value::String(text) => encode_str(text, out),
        Value::List(items) => {
            encode_len(items.len(), [0x90, 0xdc, 0xdd], 16, out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(entries) => {
            encode_len(entries.len(), [0x80, 0xde, 0xdf], 16, out);
            let mut sorted: Vec<&(String, Value)> = entries.iter().collect();
            // Stable, so duplicate keys (which cty never produces) keep their relative order.
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (key, item) in sorted {
                encode_str(key, out);
                encode_into(item, out);
            }
        }
    }
}

fn encode_number(number: &Number, out: &mut Vec<u8>) {
    match number {
        Number::Int(int) => encode_int(*int, out),
        Number::UInt(uint) => match i64::try_from(*uint) {
            Ok(int) => encode_int(int, out),
            // Above i64::MAX the value is non-zero, so trailing_zeros < 64.
            Err(_) if (uint >> uint.trailing_zeros()) < (1 << 53) => {
                #[allow(clippy::cast_precision_loss)] // exact: at most 53 significant bits
                encode_f64(*uint as f64, out);
            }
            Err(_) => encode_str(&uint.to_string(), out),
        },
        Number::Float(float) => match integral_i64(*float) {
            Some(int) => encode_int(int, out),
            None => encode_f64(*float, out),
        },
        Number::Text(text) => match Number::from_decimal(text) {
            Some(Number::Text(plain)) => encode_str(&plain, out),
            Some(exact) => encode_number(&exact, out),
            None => encode_str(text, out),
        },
    }
}

/// The integer a float holds, if it is integral and within the int64 range.
fn integral_i64(float: f64) -> Option<i64> {
    // 2^63 is exactly representable; the range is [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if float.is_finite() && float.fract() == 0.0 && (-LIMIT..LIMIT).contains(&float) {
        #[allow(clippy::cast_possible_truncation)] // integral and in range: exact
        Some(float as i64)
    } else {
        None
    }
}

fn encode_int(int: i64, out: &mut Vec<u8>) {
    if let Ok(uint) = u64::try_from(int) {
        encode_uint(uint, out);
    } else if int >= -32 {
        out.extend_from_slice(&(int as i8).to_be_bytes());
    } else if let Ok(small) = i8::try_from(int) {
        out.push(0xd0);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = i16::try_from(int) {
        out.push(0xd1);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = i32::try_from(int) {
        out.push(0xd2);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&int.to_be_bytes());
    }
}

fn encode_uint(uint: u64, out: &mut Vec<u8>) {
    if uint < 0x80 {
        out.push(uint as u8);
    } else if let Ok(small) = u8::try_from(uint) {
        out.extend_from_slice(&[0xcc, small]);
    } else if let Ok(small) = u16::try_from(uint) {
        out.push(0xcd);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = u32::try_from(uint) {
        out.push(0xce);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&uint.to_be_bytes());
    }
}

fn encode_f64(float: f64, out: &mut Vec<u8>) {
    out.push(0xcb);
    out.extend_from_slice(&float.to_be_bytes());
}

fn encode_str(text: &str, out: &mut Vec<u8>) {
    let len = text.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(small) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, small]);
    } else {
        encode_wide_len(len, 0xda, 0xdb, out);
    }
    out.extend_from_slice(text.as_bytes());
}

/// Writes a container header: the fix form when `len < fix_limit`, else the 16- or 32-bit form.
fn encode_len(len: usize, [fix, wide16, wide32]: [u8; 3], fix_limit: usize, out: &mut Vec<u8>) {
    if len < fix_limit {
        out.push(fix | len as u8);
    } else {
        encode_wide_len(len, wide16, wide32, out);
    }
}

fn encode_wide_len(len: usize, wide16: u8, wide32: u8, out: &mut Vec<u8>) {
    if let Ok(small) = u16::try_from(len) {
        out.push(wide16);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        let len = u32::try_from(len).expect("msgpack lengths are at most u32::MAX");
        out.push(wide32);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A cursor over the input that reports every failure with the offset of the item being read.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Takes the next `n` bytes of the item that starts at `item`.
    fn take(&mut self, n: usize, item: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(DecodeError::Truncated {
                offset: item,
                what,
                needed: n - available,
            });
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn fixed<const N: usize>(
        &mut self,
        item: usize,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut buf = [0; N];
        buf.copy_from_slice(self.take(N, item, what)?);
        Ok(buf)
    }

    /// Reads a big-endian length of `N` bytes (1, 2 or 4).
    fn len<const N: usize>(
        &mut self,
        item: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let raw = self.fixed::<N>(item, what)?;
        let len = raw
            .iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
        // On a 16-bit target an oversized length simply fails as truncated.
        Ok(usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let item = self.pos;
        let [marker] = self.fixed::<1>(item, "value")?;
        let int = |int: i64| Ok(Value::Number(Number::Int(int)));
        match marker {
            0x00..=0x7f => int(i64::from(marker)),
            0x80..=0x8f => self.map(item, usize::from(marker & 0x0f), depth),
            0x90..=0x9f => self.array(item, usize::from(marker & 0x0f), depth),
            0xa0..=0xbf => self.string(item, usize::from(marker & 0x1f), "fixstr body"),
            0xc0 => Ok(Value::Null),
            0xc1 => Err(DecodeError::ReservedMarker { offset: item }),
            0xc2 => Ok(Value::Bool(false)),
            0xc3 => Ok(Value::Bool(true)),
            0xc4 => {
                let len = self.len::<1>(item, "bin8 length")?;
                self.string(item, len, "bin8 body")
            }
            0xc5 => {
                let len = self.len::<2>(item, "bin16 length")?;
                self.string(item, len, "bin16 body")
            }
            0xc6 => {
                let len = self.len::<4>(item, "bin32 length")?;
                self.string(item, len, "bin32 body")
            }
            0xc7 => {
                let len = self.len::<1>(item, "ext8 length")?;
                self.ext(item, len)
            }
            0xc8 => {
                let len = self.len::<2>(item, "ext16 length")?;
                self.ext(item, len)
            }
            0xc9 => {
                let len = self.len::<4>(item, "ext32 length")?;
                self.ext(item, len)
            }
            0xca => {
                let float = f32::from_be_bytes(self.fixed(item, "float32")?);
                Ok(Value::Number(Number::Float(f64::from(float))))
            }
            0xcb => {
                let float = f64::from_be_bytes(self.fixed(item, "float64")?);
                Ok(Value::Number(Number::Float(float)))
            }
            0xcc => int(i64::from(u8::from_be_bytes(self.fixed(item, "uint8")?))),
            0xcd => int(i64::from(u16::from_be_bytes(self.fixed(item, "uint16")?))),
            0xce => int(i64::from(u32::from_be_bytes(self.fixed(item, "uint32")?))),
            0xcf => {
                let uint = u64::from_be_bytes(self.fixed(item, "uint64")?);
                match i64::try_from(uint) {
                    Ok(small) => int(small),
                    Err(_) => Ok(Value::Number(Number::UInt(uint))),
                }
            }
            0xd0 => int(i64::from(i8::from_be_bytes(self.fixed(item, "int8")?))),
            0xd1 => int(i64::from(i16::from_be_bytes(self.fixed(item, "int16")?))),
            0xd2 => int(i64::from(i32::from_be_bytes(self.fixed(item, "int32")?))),
            0xd3 => int(i64::from_be_bytes(self.fixed(item, "int64")?)),
            0xd4 => self.ext(item, 1),
            0xd5 => self.ext(item, 2),
            0xd6 => self.ext(item, 4),
            0xd7 => self.ext(item, 8),
            0xd8 => self.ext(item, 16),
            0xd9 => {
                let len = self.len::<1>(item, "str8 length")?;
                self.string(item, len, "str8 body")
            }
            0xda => {
                let len = self.len::<2>(item, "str16 length")?;
                self.string(item, len, "str16 body")
            }
            0xdb => {
                let len = self.len::<4>(item, "str32 length")?;
                self.string(item, len, "str32 body")
            }
            0xdc => {
                let len = self.len::<2>(item, "array16 length")?;
                self.array(item, len, depth)
            }
            0xdd => {
                let len = self.len::<4>(item, "array32 length")?;
                self.array(item, len, depth)
            }
            0xde => {
                let len = self.len::<2>(item, "map16 length")?;
                self.map(item, len, depth)
            }
            0xdf => {
                let len = self.len::<4>(item, "map32 length")?;
                self.map(item, len, depth)
            }
            0xe0..=0xff => int(i64::from(i8::from_be_bytes([marker]))),
        }
    }

    fn string(
        &mut self,
        item: usize,
        len: usize,
        what: &'static str,
    ) -> Result<Value, DecodeError> {
        let body_start = self.pos;
        let body = self.take(len, item, what)?;
        match std::str::from_utf8(body) {
            Ok(text) => Ok(Value::String(text.to_owned())),
            Err(err) => Err(DecodeError::InvalidUtf8 {
                offset: item,
                bad_byte: body_start + err.valid_up_to(),
            }),
        }
    }

    fn ext(&mut self, item: usize, len: usize) -> Result<Value, DecodeError> {
        let [ext_type] = self.fixed::<1>(item, "ext type")?;
        let ext_type = i8::from_be_bytes([ext_type]);
        // Type 0 is cty's plain unknown; 12 carries refinements we have no use for.
        if ext_type != 0 && ext_type != 0x0c {
            return Err(DecodeError::UnsupportedExt {
                offset: item,
                ext_type,
            });
        }
        self.take(len, item, "ext payload")?;
        Ok(Value::Unknown)
    }

    fn enter(&self, item: usize, depth: usize) -> Result<(), DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset: item,
                max: MAX_DEPTH,
            });
        }
        Ok(())
    }

    /// Every element takes at least one byte (every map entry two): capping the reservation
    /// there keeps a forged length from allocating more than the input could ever fill.
    fn capacity(&self, len: usize, min_entry_bytes: usize) -> usize {
        len.min((self.bytes.len() - self.pos) / min_entry_bytes)
    }

    fn array(&mut self, item: usize, len: usize, depth: usize) -> Result<Value, DecodeError> {
        self.enter(item, depth)?;
        let mut items = Vec::with_capacity(self.capacity(len, 1));
        for _ in 0..len {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::List(items))
    }

    fn map(&mut self, item: usize, len: usize, depth: usize) -> Result<Value, DecodeError> {
        self.enter(item, depth)?;
        let mut entries = Vec::with_capacity(self.capacity(len, 2));
        for _ in 0..len {
            let key_at = self.pos;
            let Some(&marker) = self.bytes.get(key_at) else {
                return Err(DecodeError::Truncated {
                    offset: item,
                    what: "map entry",
                    needed: 1,
                });
            };
            let is_string = matches!(marker, 0xa0..=0xbf | 0xc4..=0xc6 | 0xd9..=0xdb);
            if !is_string {
                return Err(DecodeError::NonStringKey {
                    offset: key_at,
                    found: marker_kind(marker),
                });
            }
            let Value::String(key) = self.value(depth + 1)? else {
                unreachable!("str and bin markers always decode to strings")
            };
            entries.push((key, self.value(depth + 1)?));
        }
        Ok(Value::Map(entries))
    }
}

/// The msgpack kind a marker byte starts, for error messages.
fn marker_kind(marker: u8) -> &'static str {
    match marker {
        0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => "an integer",
        0x80..=0x8f | 0xde | 0xdf => "a map",
        0x90..=0x9f | 0xdc | 0xdd => "an array",
        0xa0..=0xbf | 0xd9..=0xdb => "a str",
        0xc4..=0xc6 => "a bin",
        0xc0 => "nil",
        0xc1 => "the reserved marker 0xc1",
        0xc2 | 0xc3 => "a bool",
        0xca | 0xcb => "a float",
        0xc7..=0xc9 | 0xd4..=0xd8 => "an ext",
    }
}

/// A decimal number as `±digits × 10^exponent`, normalised so that `digits` has no leading or
/// trailing zeros (empty means zero, with exponent 0).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

/// Exact float64 values have at most 767 significant decimal digits; more can never match.
const MAX_EXACT_F64_DIGITS: usize = 800;

/// Exponents are clamped here while parsing so arithmetic on them cannot overflow.
const EXPONENT_CLAMP: i64 = 1 << 40;

/// Beyond this exponent the plain form is not written out (it would be huge).
const MAX_PLAIN_EXPONENT: i64 = 10_000;

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let bytes = text.as_bytes();
        let mut pos = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                pos = 1;
                true
            }
            Some(b'+') => {
                pos = 1;
                false
            }
            _ => false,
        };
        let mut digits = String::new();
        let digits_run = |pos: &mut usize, digits: &mut String| {
            let start = *pos;
            while let Some(byte) = bytes.get(*pos).filter(|b| b.is_ascii_digit()) {
                digits.push(char::from(*byte));
                *pos += 1;
            }
            *pos - start
        };
        let int_len = digits_run(&mut pos, &mut digits);
        let mut frac_len = 0;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            frac_len = digits_run(&mut pos, &mut digits);
        }
        if int_len + frac_len == 0 {
            return None;
        }
        let mut exponent: i64 = 0;
        if matches!(bytes.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            let exp_negative = match bytes.get(pos) {
                Some(b'-') => {
                    pos += 1;
                    true
                }
                Some(b'+') => {
                    pos += 1;
                    false
                }
                _ => false,
            };
            let start = pos;
            while let Some(byte) = bytes.get(pos).filter(|b| b.is_ascii_digit()) {
                exponent = (exponent * 10 + i64::from(byte - b'0')).min(EXPONENT_CLAMP);
                pos += 1;
            }
            if pos == start {
                return None;
            }
            if exp_negative {
                exponent = -exponent;
            }
        }
        if pos != bytes.len() {
            return None;
        }
        let significant = digits.trim_start_matches('0').trim_end_matches('0');
        if significant.is_empty() {
            return Some(Decimal {
                negative,
                digits: String::new(),
                exponent: 0,
            });
        }
        let trailing_zeros = digits.len() - digits.trim_end_matches('0').len();
        // Both lengths are bounded by the input length, far below i64::MAX.
        let shift = i64::try_from(trailing_zeros).ok()? - i64::try_from(frac_len).ok()?;
        Some(Decimal {
            negative,
            digits: significant.to_owned(),
            exponent: exponent + shift,
        })
    }

    fn to_i64(&self) -> Option<i64> {
        if self.digits.is_empty() {
            return Some(0);
        }
        let exponent = u32::try_from(self.exponent).ok()?;
        if self.digits.len().saturating_add(exponent as usize) > 19 {
            return None;
        }
        let magnitude = self.digits.parse::<i128>().ok()? * 10i128.pow(exponent);
        i64::try_from(if self.negative { -magnitude } else { magnitude }).ok()
    }

    /// The float64 this decimal equals exactly, if there is one (zero is handled by `to_i64`).
    fn exact_f64(&self) -> Option<f64> {
        if self.digits.is_empty() || self.digits.len() > MAX_EXACT_F64_DIGITS {
            return None;
        }
        let sign = if self.negative { "-" } else { "" };
        // Rust's parse is correctly rounded, so this is the nearest float64...
        let float: f64 = format!("{sign}{}e{}", self.digits, self.exponent)
            .parse()
            .ok()?;
        if !float.is_finite() || float == 0.0 {
            return None;
        }
        // ...and printing it with enough digits gives its exact decimal expansion to compare.
        let exact = Decimal::parse(&format!("{float:.MAX_EXACT_F64_DIGITS$e}"))?;
        (exact == *self).then_some(float)
    }

    /// Go's `big.Float.Text('f', -1)` shape: plain digits, a point only when needed.
    fn to_plain(&self) -> Option<String> {
        if self.digits.is_empty() {
            return Some("0".to_owned());
        }
        if self.exponent.abs() > MAX_PLAIN_EXPONENT {
            return None;
        }
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        let len = self.digits.len();
        if let Ok(zeros) = usize::try_from(self.exponent) {
            out.push_str(&self.digits);
            out.extend(std::iter::repeat_n('0', zeros));
        } else {
            let frac = usize::try_from(-self.exponent).ok()?;
            if frac < len {
                let (int_part, frac_part) = self.digits.split_at(len - frac);
                let _ = write!(out, "{int_part}.{frac_part}");
            } else {
                out.push_str("0.");
                out.extend(std::iter::repeat_n('0', frac - len));
                out.push_str(&self.digits);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|pair| u8::from_str_radix(pair, 16).expect("test hex"))
            .collect()
    }

    fn s(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    fn int(int: i64) -> Value {
        Value::Number(Number::Int(int))
    }

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    fn text(number: &str) -> Value {
        Value::Number(Number::Text(number.to_owned()))
    }

    const VECTOR_1: &str = "83 a3 62 61 72 cd 05 39 a3 62 61 7a c3 a3 66 6f 6f a2 76 31";
    const VECTOR_2: &str = "86 a4 61 72 67 73 91 a2 31 30 a7 63 6f 6d 6d 61 6e 64 aa 2f 62 69 \
        6e 2f 73 6c 65 65 70 a7 65 6e 76 5f 6d 61 70 c0 a5 6d 6f 75 6e 74 91 82 a8 72 65 61 64 \
        6f 6e 6c 79 c0 a6 73 6f 75 72 63 65 a2 2f 61 aa 70 72 69 76 69 6c 65 67 65 64 c2 a7 74 \
        69 6d 65 6f 75 74 1e";
    const VECTOR_4_STRING: &str = "92 c4 08 22 73 74 72 69 6e 67 22 a1 78";
    const VECTOR_4_LIST: &str =
        "92 c4 11 5b 22 6c 69 73 74 22 2c 22 73 74 72 69 6e 67 22 5d 91 a1 61";
    const VECTOR_5: &str = "d4 00 00";

    #[test]
    fn set_config_vector_decodes_to_its_three_keys_in_wire_order() {
        let value = decode(&hex(VECTOR_1)).unwrap();
        assert_eq!(
            value,
            map(&[
                ("bar", int(1337)),
                ("baz", Value::Bool(true)),
                ("foo", s("v1"))
            ])
        );
    }

    #[test]
    fn set_config_vector_round_trips_byte_exact() {
        let bytes = hex(VECTOR_1);
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn task_config_vector_decodes_to_the_expected_object() {
        let value = decode(&hex(VECTOR_2)).unwrap();
        let expected = map(&[
            ("args", Value::List(vec![s("10")])),
            ("command", s("/bin/sleep")),
            ("env_map", Value::Null),
            (
                "mount",
                Value::List(vec![map(&[("readonly", Value::Null), ("source", s("/a"))])]),
            ),
            ("privileged", Value::Bool(false)),
            ("timeout", int(30)),
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn task_config_vector_round_trips_byte_exact() {
        let bytes = hex(VECTOR_2);
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn encoding_sorts_map_keys_by_bytes_like_go_cty() {
        let value = map(&[
            ("foo", s("v1")),
            ("baz", Value::Bool(true)),
            ("bar", int(1337)),
        ]);
        assert_eq!(encode(&value), hex(VECTOR_1));
    }

    #[test]
    fn scalar_vectors_encode_to_the_exact_bytes() {
        let cases: &[(Value, &str)] = &[
            (
                Value::Number(Number::Float(0.5)),
                "cb 3f e0 00 00 00 00 00 00",
            ),
            (text("0.5"), "cb 3f e0 00 00 00 00 00 00"),
            (text("0.1"), "a3 30 2e 31"),
            (int(-1), "ff"),
            (int(200), "cc c8"),
            (int(-200), "d1 ff 38"),
            (int(70000), "ce 00 01 11 70"),
        ];
        for (value, expected) in cases {
            assert_eq!(encode(value), hex(expected), "encoding {value:?}");
        }
    }

    /// The protocol doc's vector 3 gives 2^63 as a 19-digit string, but go-cty's marshal.go
    /// tries `big.Float.Float64()` before falling back to text, and 2^63 is a power of two,
    /// hence exactly a float64. The neighbouring 2^63 + 1 is not, and becomes text.
    #[test]
    fn numbers_beyond_int64_encode_as_go_cty_does() {
        let two_pow_63 = "cb 43 e0 00 00 00 00 00 00";
        assert_eq!(
            encode(&Value::Number(Number::UInt(1 << 63))),
            hex(two_pow_63)
        );
        assert_eq!(encode(&text("9223372036854775808")), hex(two_pow_63));
        let mut next = vec![0xb3];
        next.extend_from_slice(b"9223372036854775809");
        assert_eq!(encode(&Value::Number(Number::UInt((1 << 63) + 1))), next);
        assert_eq!(encode(&text("9223372036854775809")), next);
        assert_eq!(encode(&Value::Number(Number::UInt(u64::MAX))), {
            let mut max = vec![0xb4];
            max.extend_from_slice(b"18446744073709551615");
            max
        });
    }

    #[test]
    fn integers_use_the_smallest_compact_form() {
        let cases: &[(i64, &str)] = &[
            (0, "00"),
            (127, "7f"),
            (128, "cc 80"),
            (255, "cc ff"),
            (256, "cd 01 00"),
            (65535, "cd ff ff"),
            (65536, "ce 00 01 00 00"),
            (4_294_967_296, "cf 00 00 00 01 00 00 00 00"),
            (-32, "e0"),
            (-33, "d0 df"),
            (-128, "d0 80"),
            (-129, "d1 ff 7f"),
            (-32768, "d1 80 00"),
            (-32769, "d2 ff ff 7f ff"),
            (-2_147_483_649, "d3 ff ff ff ff 7f ff ff ff"),
            (i64::MIN, "d3 80 00 00 00 00 00 00 00"),
        ];
        for (number, expected) in cases {
            assert_eq!(encode(&int(*number)), hex(expected), "encoding {number}");
        }
    }

    #[test]
    fn integral_floats_and_texts_encode_as_ints() {
        assert_eq!(encode(&Value::Number(Number::Float(30.0))), hex("1e"));
        assert_eq!(encode(&Value::Number(Number::Float(-0.0))), hex("00"));
        assert_eq!(encode(&text("1e3")), hex("cd 03 e8"));
        assert_eq!(encode(&text("-12.000")), hex("f4"));
        assert_eq!(encode(&text("0.0")), hex("00"));
    }

    #[test]
    fn infinities_encode_as_float64() {
        assert_eq!(
            encode(&Value::Number(Number::Float(f64::INFINITY))),
            hex("cb 7f f0 00 00 00 00 00 00")
        );
        assert_eq!(
            encode(&Value::Number(Number::Float(f64::NEG_INFINITY))),
            hex("cb ff f0 00 00 00 00 00 00")
        );
    }

    #[test]
    fn decimal_text_is_classified_by_exactness() {
        assert_eq!(Number::from_decimal("0.5"), Some(Number::Float(0.5)));
        assert_eq!(Number::from_decimal("1e3"), Some(Number::Int(1000)));
        assert_eq!(Number::from_decimal("+.25e1"), Some(Number::Float(2.5)));
        assert_eq!(
            Number::from_decimal("0.1"),
            Some(Number::Text("0.1".into()))
        );
        assert_eq!(
            Number::from_decimal("1.5e-1"),
            Some(Number::Text("0.15".into()))
        );
        assert_eq!(
            Number::from_decimal("-0010.100"),
            Some(Number::Text("-10.1".into()))
        );
        assert_eq!(
            Number::from_decimal("1e30"),
            Some(Number::Text(format!("1{}", "0".repeat(30))))
        );
        assert_eq!(
            Number::from_decimal("1e400"),
            Some(Number::Text(format!("1{}", "0".repeat(400))))
        );
        assert_eq!(
            Number::from_decimal("1e-3"),
            Some(Number::Text("0.001".into()))
        );
        // 2^-1074, the smallest subnormal, written out in full is exact.
        let tiny = format!("{:.1074}", 5e-324_f64);
        assert_eq!(Number::from_decimal(&tiny), Some(Number::Float(5e-324)));
        assert_eq!(
            Number::from_decimal("1e99999999999999999999"),
            Some(Number::Text("1e99999999999999999999".into()))
        );
        for bad in [
            "", "-", ".", "e5", "1e", "1e+", "1.2.3", "0x10", "inf", "NaN", " 1", "1 ",
        ] {
            assert_eq!(Number::from_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn non_numeric_text_encodes_as_the_string_itself() {
        assert_eq!(encode(&text("abc")), hex("a3 61 62 63"));
    }

    #[test]
    fn strings_use_the_smallest_str_form() {
        assert_eq!(encode(&s(&"a".repeat(31)))[0], 0xbf);
        assert_eq!(encode(&s(&"a".repeat(32)))[..2], [0xd9, 32]);
        assert_eq!(encode(&s(&"a".repeat(255)))[..2], [0xd9, 255]);
        assert_eq!(encode(&s(&"a".repeat(256)))[..3], [0xda, 1, 0]);
        assert_eq!(encode(&s(&"a".repeat(65536)))[..5], [0xdb, 0, 1, 0, 0]);
    }

    #[test]
    fn containers_use_the_smallest_form_and_round_trip() {
        let list = Value::List((0..16).map(int).collect());
        let bytes = encode(&list);
        assert_eq!(bytes[..3], [0xdc, 0, 16]);
        assert_eq!(decode(&bytes).unwrap(), list);
        let entries: Vec<(String, Value)> = (0..16).map(|i| (format!("k{i:02}"), int(i))).collect();
        let wide_map = Value::Map(entries);
        let bytes = encode(&wide_map);
        assert_eq!(bytes[..3], [0xde, 0, 16]);
        assert_eq!(decode(&bytes).unwrap(), wide_map);
        assert_eq!(encode(&Value::List(vec![])), hex("90"));
        assert_eq!(encode(&Value::Map(vec![])), hex("80"));
    }

    #[test]
    fn dynamic_wrappers_decode_as_two_element_lists_with_the_type_as_a_string() {
        assert_eq!(
            decode(&hex(VECTOR_4_STRING)).unwrap(),
            Value::List(vec![s("\"string\""), s("x")])
        );
        assert_eq!(
            decode(&hex(VECTOR_4_LIST)).unwrap(),
            Value::List(vec![s("[\"list\",\"string\"]"), Value::List(vec![s("a")])])
        );
    }

    #[test]
    fn unknown_values_decode_as_unknown_and_encode_back() {
        assert_eq!(decode(&hex(VECTOR_5)).unwrap(), Value::Unknown);
        assert_eq!(encode(&Value::Unknown), hex(VECTOR_5));
        // Refined unknown: ext8, type 12, payload map {1: true} (keys are ints there).
        assert_eq!(decode(&hex("c7 03 0c 81 01 c3")).unwrap(), Value::Unknown);
    }

    #[test]
    fn every_int_and_float_width_decodes() {
        let cases: &[(&str, Number)] = &[
            ("cc 05", Number::Int(5)),
            ("cd 00 05", Number::Int(5)),
            ("ce 00 00 00 05", Number::Int(5)),
            ("cf 00 00 00 00 00 00 00 05", Number::Int(5)),
            ("cf ff ff ff ff ff ff ff ff", Number::UInt(u64::MAX)),
            ("d0 fb", Number::Int(-5)),
            ("d1 ff fb", Number::Int(-5)),
            ("d2 ff ff ff fb", Number::Int(-5)),
            ("d3 ff ff ff ff ff ff ff fb", Number::Int(-5)),
            ("fb", Number::Int(-5)),
            ("ca 3f 00 00 00", Number::Float(0.5)),
            ("cb 3f e0 00 00 00 00 00 00", Number::Float(0.5)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                decode(&hex(bytes)).unwrap(),
                Value::Number(expected.clone()),
                "{bytes}"
            );
        }
    }

    #[test]
    fn bin_holding_utf8_decodes_as_a_string() {
        assert_eq!(decode(&hex("c4 02 68 69")).unwrap(), s("hi"));
    }

    #[test]
    fn empty_input_is_truncated_at_byte_zero() {
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Truncated {
                offset: 0,
                what: "value",
                needed: 1
            })
        );
    }

    #[test]
    fn truncated_string_names_its_offset_and_shortfall() {
        assert_eq!(
            decode(&hex("91 a3 61")),
            Err(DecodeError::Truncated {
                offset: 1,
                what: "fixstr body",
                needed: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert_eq!(
            decode(&hex("c0 c0 c0")),
            Err(DecodeError::TrailingBytes {
                offset: 1,
                count: 2
            })
        );
    }

    #[test]
    fn non_string_map_keys_are_rejected() {
        assert_eq!(
            decode(&hex("81 01 c0")),
            Err(DecodeError::NonStringKey {
                offset: 1,
                found: "an integer"
            })
        );
    }

    #[test]
    fn invalid_utf8_is_rejected_with_the_bad_byte() {
        assert_eq!(
            decode(&hex("92 c0 a3 61 ff 62")),
            Err(DecodeError::InvalidUtf8 {
                offset: 2,
                bad_byte: 4
            })
        );
        assert_eq!(
            decode(&hex("c4 01 80")),
            Err(DecodeError::InvalidUtf8 {
                offset: 0,
                bad_byte: 2
            })
        );
    }

    #[test]
    fn foreign_ext_types_and_the_reserved_marker_are_rejected() {
        assert_eq!(
            decode(&hex("d6 ff 00 00 00 00")),
            Err(DecodeError::UnsupportedExt {
                offset: 0,
                ext_type: -1
            })
        );
        assert_eq!(
            decode(&hex("91 c1")),
            Err(DecodeError::ReservedMarker { offset: 1 })
        );
    }

    #[test]
    fn nesting_is_limited_to_max_depth() {
        let nested = |levels: usize| {
            let mut bytes = vec![0x91; levels - 1];
            bytes.push(0x90);
            bytes
        };
        assert!(decode(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            decode(&nested(MAX_DEPTH + 1)),
            Err(DecodeError::TooDeep {
                offset: MAX_DEPTH,
                max: MAX_DEPTH
            })
        );
    }

    #[test]
    fn forged_huge_lengths_fail_without_allocating() {
        assert!(matches!(
            decode(&hex("dd ff ff ff ff c0")),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&hex("df ff ff ff ff a1 61 c0")),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&hex("db ff ff ff ff 61")),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_and_where() {
        let err = decode(&hex("81 01 c0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cty-msgpack map key at byte 1 is an integer, expected a string"
        );
    }

    /// Small deterministic xorshift generator, so the fuzz-ish test needs no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % bound as u64).unwrap()
        }
    }

    #[test]
    fn truncations_and_byte_flips_of_the_vectors_never_panic() {
        let vectors = [VECTOR_1, VECTOR_2, VECTOR_4_STRING, VECTOR_4_LIST, VECTOR_5].map(hex);
        for bytes in &vectors {
            for len in 0..bytes.len() {
                assert!(
                    decode(&bytes[..len]).is_err(),
                    "prefix of {len} bytes of {bytes:02x?} decoded"
                );
            }
        }
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut bytes = vectors[round % vectors.len()].clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = u8::try_from(rng.next() & 0xff).unwrap();
            }
            if rng.below(4) == 0 {
                bytes.truncate(rng.below(bytes.len() + 1));
            }
            if let Ok(value) = decode(&bytes) {
                // Whatever decodes must re-encode into something that decodes again.
                assert!(decode(&encode(&value)).is_ok(), "re-encoding {value:?}");
            }
        }
        for _ in 0..20_000 {
            let len = rng.below(24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| u8::try_from(rng.next() & 0xff).unwrap())
                .collect();
            let _ = decode(&bytes);
        }
    }
}
