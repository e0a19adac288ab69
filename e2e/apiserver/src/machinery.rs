//! The pure API machinery this server uses, from `lab-apimachinery`: selectors,
//! patches, server-side apply, defaulting and Service allocation, validation.

pub use lab_apimachinery::{apply, defaults, patch, selector, validation};
