//! Label and field selectors: the `labelSelector` / `fieldSelector` query parameters (and
//! `kubectl -l` / `--field-selector`) and `metav1.LabelSelector` objects.
//!
//! Exposes [`LabelSelector`] (parsed with apimachinery's lexer and grammar, so the same
//! inputs are accepted and rejected with the same messages), [`FieldSelector`] (terms
//! resolved generically against the object's JSON), and [`SelectorError`], whose
//! `Display` is the message a real server puts in its 400 response.

mod field;
mod label;

pub use field::{FieldOp, FieldSelector, FieldTerm, field_value};
pub use label::{LabelSelector, Operator, Requirement};

/// A selector the server refuses with 400 Bad Request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A malformed label selector, e.g. `unable to parse requirement: ...` or
    /// `found ',', expected: identifier after ','`.
    #[error("{0}")]
    Label(String),
    /// A malformed field selector, e.g. `invalid selector: 'a'; can't understand 'a'`.
    #[error("{0}")]
    Field(String),
    /// A field the resource does not support selecting on.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}
