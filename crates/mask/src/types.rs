//! Column types as the masker sees them: the type OID and format code from RowDescription, mapped
//! to the few families whose values it knows how to produce validly.

/// Well-known PostgreSQL type OIDs (`pg_type.oid`, fixed since the catalogs were bootstrapped).
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `bytea`.
    pub const BYTEA: u32 = 17;
    /// `"char"` (single byte).
    pub const CHAR: u32 = 18;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `int8`.
    pub const INT8: u32 = 20;
    /// `int2`.
    pub const INT2: u32 = 21;
    /// `int4`.
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `xml`.
    pub const XML: u32 = 142;
    /// `float4`.
    pub const FLOAT4: u32 = 700;
    /// `float8`.
    pub const FLOAT8: u32 = 701;
    /// `unknown` (untyped literals such as `SELECT 'x'`).
    pub const UNKNOWN: u32 = 705;
    /// `bpchar` (`char(n)`).
    pub const BPCHAR: u32 = 1042;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `date`.
    pub const DATE: u32 = 1082;
    /// `timestamp`.
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
}

/// Format code of a result column: RowDescription's (for a portal) or Bind's result formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Format code 0: the type's text output.
    Text,
    /// Format code 1: the type's binary send format.
    Binary,
}

impl Format {
    /// Maps a wire format code; anything but 0 and 1 is `None` (the caller should fail closed).
    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// A result column's declared type as the masker needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColumnType {
    /// `pg_type` OID from RowDescription.
    pub oid: u32,
    /// Format the values arrive in.
    pub format: Format,
}

impl ColumnType {
    /// A column of type `oid` in text format.
    pub const fn text(oid: u32) -> Self {
        ColumnType {
            oid,
            format: Format::Text,
        }
    }

    /// A column of type `oid` in binary format.
    pub const fn binary(oid: u32) -> Self {
        ColumnType {
            oid,
            format: Format::Binary,
        }
    }

    /// The family this type's masked values are produced for.
    pub fn kind(&self) -> TypeKind {
        TypeKind::from_oid(self.oid)
    }
}

/// The type families the masker can produce valid values for. Everything else is
/// [`TypeKind::Other`], whose masked value is always SQL NULL (fail closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TypeKind {
    /// `text`, `varchar`, `name`, `"char"`, `unknown`: any UTF-8 string is valid, in both formats
    /// (their binary form is the same bytes).
    Text,
    /// `bpchar` (`char(n)`): as [`TypeKind::Text`], and replacements shorter than the value are
    /// padded with spaces to its character count, as the server pads.
    Bpchar,
    /// `json` (text and binary are the same bytes): masked values are JSON strings.
    Json,
    /// `jsonb`: in binary format a version byte (1) precedes the JSON text.
    Jsonb,
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `numeric`.
    Numeric,
    /// `float4`.
    Float4,
    /// `float8`.
    Float8,
    /// `uuid`.
    Uuid,
    /// `bytea`.
    Bytea,
    /// Anything else (`bool`, dates and times, `xml`, arrays, enums, ranges, extension types...):
    /// masked to NULL.
    Other,
}

impl TypeKind {
    /// The family of a type OID. Domains, arrays and extension types (e.g. `citext`, whose OID is
    /// assigned at `CREATE EXTENSION`) are [`TypeKind::Other`]; a caller that has resolved such a
    /// type to its base can build the [`ColumnType`] with the base OID instead.
    pub fn from_oid(oid: u32) -> TypeKind {
        match oid {
            oid::TEXT | oid::VARCHAR | oid::NAME | oid::CHAR | oid::UNKNOWN => TypeKind::Text,
            oid::BPCHAR => TypeKind::Bpchar,
            oid::JSON => TypeKind::Json,
            oid::JSONB => TypeKind::Jsonb,
            oid::INT2 => TypeKind::Int2,
            oid::INT4 => TypeKind::Int4,
            oid::INT8 => TypeKind::Int8,
            oid::NUMERIC => TypeKind::Numeric,
            oid::FLOAT4 => TypeKind::Float4,
            oid::FLOAT8 => TypeKind::Float8,
            oid::UUID => TypeKind::Uuid,
            oid::BYTEA => TypeKind::Bytea,
            _ => TypeKind::Other,
        }
    }

    /// Whether content detectors run over values of this family in `format`: text-like values,
    /// and the text form of `int8`/`numeric` (card numbers are stored as numbers too).
    pub fn scanned(self, format: Format) -> bool {
        match self {
            TypeKind::Text | TypeKind::Bpchar | TypeKind::Json | TypeKind::Jsonb => true,
            TypeKind::Int8 | TypeKind::Numeric => format == Format::Text,
            _ => false,
        }
    }

    /// How detectors must replace what they find in this family so the value stays valid.
    pub(crate) fn replace_style(self) -> crate::detect::Replace {
        match self {
            TypeKind::Text | TypeKind::Bpchar => crate::detect::Replace::Text,
            _ => crate::detect::Replace::Numeric,
        }
    }
}
