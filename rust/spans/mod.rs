//! Token spans and the masks of the eight mask strategies, for a whole batch at once.
//!
//! Input (ragged batch as flat arrays): the offset mapping of every token of every sample
//! (`n_total x 2`, character offsets into that sample's rendered prompt), each sample's
//! token count, and each sample's character spans of the system-prompt content (optional),
//! the question content and the answer content, plus the prompt's length in characters.
//! Optionally a per-token flag marking special tokens.
//!
//! # Rules (mirrored exactly by `python/pvrs/reference.py`)
//!
//! * A token is **zero-width** when `start == end` (for example `(0, 0)` for special tokens
//!   some tokenizers insert). Zero-width tokens never belong to a content span and are
//!   exempt from the ordering check.
//! * Every other token must have `start < end <= text_len`, and both its start and end must
//!   be `>=` those of the previous non-zero-width token (several tokens may share one
//!   character, as byte-level BPE does for emoji, but offsets never go backwards).
//! * A token **belongs to a character span** `[a, b)` when it shares at least one character
//!   with it: `start < b && end > a`. A token that straddles a boundary (a SentencePiece
//!   `▁word` whose `▁` is the template's space, a byte-level piece that merges template
//!   text with content) therefore counts as content. The token span of a content span is
//!   `[first, last + 1)` over the tokens that belong to it; zero-width tokens inside that
//!   range are skipped by the `*_mean` strategies.
//! * `question_last_special` selects the token right after the last question token, and
//!   only when that token is special (flagged) or zero-width; otherwise it is an error
//!   naming the template.
//! * `answer_previous` selects the token right before the first answer token (an error when
//!   the answer starts the prompt).
//!
//! Errors, never silently wrong masks: an empty answer, a span outside the text or with
//! `start > end`, offsets that go backwards or past the text, an answer that maps to no
//! token, and a requested strategy that selects zero tokens. Every message names the sample.
//!
//! The types live here; `build` checks a batch and builds its token spans and masks.

use crate::error::{Error, Result};

mod build;
#[cfg(test)]
mod tests;

pub use build::{build_masks, build_masks_into};

/// Which tokens of a conversation a persona vector averages (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    PersonaMean,
    PersonaLast,
    QuestionLast,
    QuestionLastSpecial,
    AnswerPrevious,
    AnswerFirst,
    AnswerLast,
    AnswerMean,
}

impl Strategy {
    pub const ALL: [Strategy; 8] = [
        Strategy::PersonaMean,
        Strategy::PersonaLast,
        Strategy::QuestionLast,
        Strategy::QuestionLastSpecial,
        Strategy::AnswerPrevious,
        Strategy::AnswerFirst,
        Strategy::AnswerLast,
        Strategy::AnswerMean,
    ];

    /// The lower-case name used on disk and in Python's `MaskStrategy`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::PersonaMean => "persona_mean",
            Strategy::PersonaLast => "persona_last",
            Strategy::QuestionLast => "question_last",
            Strategy::QuestionLastSpecial => "question_last_special",
            Strategy::AnswerPrevious => "answer_previous",
            Strategy::AnswerFirst => "answer_first",
            Strategy::AnswerLast => "answer_last",
            Strategy::AnswerMean => "answer_mean",
        }
    }

    pub fn parse(name: &str) -> Result<Strategy> {
        Strategy::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let valid: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown mask strategy {name:?}; choose from {}",
                    valid.join(", ")
                ))
            })
    }
}

/// A half-open character range `[start, end)` of the rendered prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CharSpan {
    pub start: u64,
    pub end: u64,
}

impl CharSpan {
    pub fn new(start: u64, end: u64) -> Self {
        CharSpan { start, end }
    }
}

/// Character spans of one sample's contents in its rendered prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleSpans {
    /// The system-prompt content; `None` when the prompt has none (baseline persona).
    pub system: Option<CharSpan>,
    pub question: CharSpan,
    pub answer: CharSpan,
    /// Length of the rendered prompt in characters (the unit of the offsets).
    pub text_len: u64,
}

/// A half-open token range `[first, end)` within one sample; never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenSpan {
    pub first: usize,
    pub end: usize,
}

impl TokenSpan {
    pub fn last(self) -> usize {
        self.end - 1
    }
}

/// Token spans of one sample (indices relative to the sample's first token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleTokens {
    /// `None` when there is no system span or it covers no token.
    pub system: Option<TokenSpan>,
    /// `None` when the question covers no token.
    pub question: Option<TokenSpan>,
    pub answer: TokenSpan,
    /// The special or zero-width token right after the question, if there is one.
    pub question_special: Option<usize>,
}

/// An offset value as stored in a numpy array (`u32` or `i64`); negative values are invalid.
pub trait Offset: Copy + Send + Sync {
    fn to_u64(self) -> Option<u64>;
    /// The value as `i64`, exact (both types fit): the hot loop tests signs, not options.
    fn to_i64(self) -> i64;
}

impl Offset for u32 {
    fn to_u64(self) -> Option<u64> {
        Some(u64::from(self))
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
}

impl Offset for i64 {
    fn to_u64(self) -> Option<u64> {
        u64::try_from(self).ok()
    }
    fn to_i64(self) -> i64 {
        self
    }
}

/// A ragged batch as flat arrays.
pub struct Batch<'a, T: Offset> {
    /// `2 * n_total` values: `start, end` of every token of every sample, samples concatenated.
    pub offsets: &'a [T],
    /// Token count of each sample.
    pub lengths: &'a [usize],
    pub spans: &'a [SampleSpans],
    /// Per-token special flag (`n_total`), used by `question_last_special`; `None`: no token
    /// is special except zero-width ones.
    pub special: Option<&'a [bool]>,
    /// Names used in error messages (one per sample); empty: samples are named `#index`.
    pub sample_ids: &'a [String],
    /// Name of the chat template, used in error messages.
    pub template: &'a str,
}

/// Result of `build_masks`.
#[derive(Debug)]
pub struct BatchMasks {
    pub strategies: Vec<Strategy>,
    pub n_total: usize,
    /// `strategies.len() x n_total`, row-major: row `k` is strategy `k` over all tokens.
    pub masks: Vec<bool>,
    pub tokens: Vec<SampleTokens>,
}

impl BatchMasks {
    /// The mask row of strategy index `k`.
    pub fn row(&self, k: usize) -> &[bool] {
        &self.masks[k * self.n_total..(k + 1) * self.n_total]
    }
}
