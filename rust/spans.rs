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

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Samples below this count are processed on the calling thread (rayon overhead dominates).
const PARALLEL_MIN_SAMPLES: usize = 64;

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
}

impl Offset for u32 {
    fn to_u64(self) -> Option<u64> {
        Some(u64::from(self))
    }
}

impl Offset for i64 {
    fn to_u64(self) -> Option<u64> {
        u64::try_from(self).ok()
    }
}

impl Offset for u64 {
    fn to_u64(self) -> Option<u64> {
        Some(self)
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

impl<'a, T: Offset> Batch<'a, T> {
    fn sample_name(&self, i: usize) -> String {
        match self.sample_ids.get(i) {
            Some(id) => format!("sample '{id}'"),
            None => format!("sample #{i}"),
        }
    }

    fn validate_shapes(&self) -> Result<Vec<usize>> {
        let n = self.lengths.len();
        if self.spans.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} samples have lengths but {} have spans; pass one span row per sample",
                n,
                self.spans.len()
            )));
        }
        if !self.sample_ids.is_empty() && self.sample_ids.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} sample ids for {} samples; pass one id per sample (or none)",
                self.sample_ids.len(),
                n
            )));
        }
        let mut starts = Vec::with_capacity(n);
        let mut total = 0usize;
        for &len in self.lengths {
            starts.push(total);
            total = total.checked_add(len).ok_or_else(|| {
                Error::InvalidArgument("sample lengths overflow the address space".into())
            })?;
        }
        if self.offsets.len() != 2 * total {
            return Err(Error::InvalidArgument(format!(
                "offsets hold {} values but the sample lengths sum to {total} tokens; \
                 offsets must be an (n_total_tokens, 2) array",
                self.offsets.len()
            )));
        }
        if let Some(special) = self.special {
            if special.len() != total {
                return Err(Error::InvalidArgument(format!(
                    "special flags hold {} values for {total} tokens; pass one flag per token",
                    special.len()
                )));
            }
        }
        Ok(starts)
    }

    /// Token spans of sample `i` (whose tokens start at flat index `start`), after checking
    /// its spans and offsets, and checking every requested strategy selects a token.
    fn sample_tokens(
        &self,
        i: usize,
        start: usize,
        strategies: &[Strategy],
    ) -> Result<SampleTokens> {
        let name = || self.sample_name(i);
        let spans = &self.spans[i];
        let n = self.lengths[i];
        let check = |what: &str, span: CharSpan| -> Result<()> {
            if span.start > span.end || span.end > spans.text_len {
                return Err(Error::Span(format!(
                    "{}: the {what} span {}..{} lies outside the rendered prompt of {} characters",
                    name(),
                    span.start,
                    span.end,
                    spans.text_len
                )));
            }
            Ok(())
        };
        if let Some(system) = spans.system {
            check("system prompt", system)?;
        }
        check("question", spans.question)?;
        check("answer", spans.answer)?;
        if spans.answer.start == spans.answer.end {
            return Err(Error::Span(format!(
                "{}: the answer is empty; every QA pair needs a non-empty answer",
                name()
            )));
        }

        let offsets = &self.offsets[2 * start..2 * (start + n)];
        let mut bounds = [None::<(usize, usize)>; 3];
        let targets = [spans.system, Some(spans.question), Some(spans.answer)];
        let (mut prev_start, mut prev_end) = (0u64, 0u64);
        for t in 0..n {
            let (s, e) = match (offsets[2 * t].to_u64(), offsets[2 * t + 1].to_u64()) {
                (Some(s), Some(e)) => (s, e),
                _ => {
                    return Err(Error::Span(format!(
                        "{}: token {t} has a negative offset",
                        name()
                    )))
                }
            };
            if s == e {
                continue;
            }
            if s > e || e > spans.text_len {
                return Err(Error::Span(format!(
                    "{}: token {t} has offsets ({s}, {e}) outside the prompt of {} characters",
                    name(),
                    spans.text_len
                )));
            }
            if s < prev_start || e < prev_end {
                return Err(Error::Span(format!(
                    "{}: offsets are not monotone at token {t}: ({s}, {e}) after \
                     ({prev_start}, {prev_end}); tokenize the rendered prompt in one call",
                    name()
                )));
            }
            (prev_start, prev_end) = (s, e);
            for (bound, target) in bounds.iter_mut().zip(targets) {
                if let Some(span) = target {
                    if s < span.end && e > span.start {
                        *bound = Some(match *bound {
                            None => (t, t),
                            Some((first, _)) => (first, t),
                        });
                    }
                }
            }
        }
        let to_span = |b: Option<(usize, usize)>| {
            b.map(|(first, last)| TokenSpan {
                first,
                end: last + 1,
            })
        };
        let answer = to_span(bounds[2]).ok_or_else(|| {
            Error::Span(format!(
                "{}: the answer (characters {}..{}) covers no token",
                name(),
                spans.answer.start,
                spans.answer.end
            ))
        })?;
        let question = to_span(bounds[1]);
        let is_special = |t: usize| {
            offsets[2 * t].to_u64() == offsets[2 * t + 1].to_u64()
                || self.special.is_some_and(|flags| flags[start + t])
        };
        let question_special = question.map(|q| q.end).filter(|&t| t < n && is_special(t));
        let tokens = SampleTokens {
            system: to_span(bounds[0]),
            question,
            answer,
            question_special,
        };
        for &strategy in strategies {
            self.check_selects(i, &tokens, strategy)?;
        }
        Ok(tokens)
    }

    fn check_selects(&self, i: usize, tokens: &SampleTokens, strategy: Strategy) -> Result<()> {
        let why = match strategy {
            Strategy::PersonaMean | Strategy::PersonaLast if tokens.system.is_none() => {
                if self.spans[i].system.is_none() {
                    "the prompt has no system prompt (baseline persona)"
                } else {
                    "the system prompt covers no token"
                }
            }
            Strategy::QuestionLast if tokens.question.is_none() => "the question covers no token",
            Strategy::QuestionLastSpecial if tokens.question_special.is_none() => {
                return Err(Error::Mask(format!(
                    "{}: question_last_special needs a special token right after the question, \
                     but the chat template '{}' puts {} there; use question_last instead",
                    self.sample_name(i),
                    self.template,
                    if tokens.question.is_some() {
                        "an ordinary token"
                    } else {
                        "no question token before it"
                    }
                )));
            }
            Strategy::AnswerPrevious if tokens.answer.first == 0 => {
                "the answer starts the prompt, so no token precedes it"
            }
            _ => return Ok(()),
        };
        Err(Error::Mask(format!(
            "{}: mask strategy {} selects no token under chat template '{}': {why}",
            self.sample_name(i),
            strategy.name(),
            self.template
        )))
    }

    fn zero_width(&self, flat: usize) -> bool {
        self.offsets[2 * flat].to_u64() == self.offsets[2 * flat + 1].to_u64()
    }

    /// Set the tokens `strategy` selects in `row` (one sample's slice of a mask row).
    fn fill(&self, strategy: Strategy, tokens: &SampleTokens, start: usize, row: &mut [bool]) {
        let set_range = |span: TokenSpan, row: &mut [bool]| {
            for (t, selected) in row.iter_mut().enumerate().take(span.end).skip(span.first) {
                *selected = !self.zero_width(start + t);
            }
        };
        // check_selects ran for every requested strategy, so each option below is Some.
        match strategy {
            Strategy::PersonaMean => {
                if let Some(s) = tokens.system {
                    set_range(s, row)
                }
            }
            Strategy::PersonaLast => {
                if let Some(s) = tokens.system {
                    row[s.last()] = true
                }
            }
            Strategy::QuestionLast => {
                if let Some(q) = tokens.question {
                    row[q.last()] = true
                }
            }
            Strategy::QuestionLastSpecial => {
                if let Some(t) = tokens.question_special {
                    row[t] = true
                }
            }
            Strategy::AnswerPrevious => {
                if let Some(t) = tokens.answer.first.checked_sub(1) {
                    row[t] = true
                }
            }
            Strategy::AnswerFirst => row[tokens.answer.first] = true,
            Strategy::AnswerLast => row[tokens.answer.last()] = true,
            Strategy::AnswerMean => set_range(tokens.answer, row),
        }
    }
}

/// Token spans and masks of every requested strategy for a whole batch.
///
/// Fails on the first (lowest-index) invalid sample, so the error does not depend on
/// thread scheduling.
pub fn build_masks<T: Offset>(batch: &Batch<'_, T>, strategies: &[Strategy]) -> Result<BatchMasks> {
    let starts = batch.validate_shapes()?;
    let n_samples = starts.len();
    let n_total = batch.offsets.len() / 2;
    let per_sample = |i: usize| batch.sample_tokens(i, starts[i], strategies);
    let results: Vec<Result<SampleTokens>> = if n_samples >= PARALLEL_MIN_SAMPLES {
        (0..n_samples).into_par_iter().map(per_sample).collect()
    } else {
        (0..n_samples).map(per_sample).collect()
    };
    let tokens = results.into_iter().collect::<Result<Vec<_>>>()?;

    let mut masks = vec![false; strategies.len() * n_total];
    if n_total > 0 {
        let fill_row = |(row, &strategy): (&mut [bool], &Strategy)| {
            for (i, sample) in tokens.iter().enumerate() {
                let (start, len) = (starts[i], batch.lengths[i]);
                batch.fill(strategy, sample, start, &mut row[start..start + len]);
            }
        };
        if n_samples >= PARALLEL_MIN_SAMPLES {
            masks
                .par_chunks_mut(n_total)
                .zip(strategies.par_iter())
                .for_each(fill_row);
        } else {
            masks
                .chunks_mut(n_total)
                .zip(strategies.iter())
                .for_each(fill_row);
        }
    }
    Ok(BatchMasks {
        strategies: strategies.to_vec(),
        n_total,
        masks,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "SYS:abc|Q:de?|A: fg." tokenized by hand: zero-width BOS, special markers, content.
    fn sample() -> (Vec<u32>, SampleSpans, Vec<bool>) {
        // text:  S Y S : a b c | Q : d  e  ?  |  A  :     f  g  .
        // index: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
        let offsets = vec![
            0, 0, // 0: zero-width BOS
            0, 4, // 1: "SYS:" special
            4, 6, // 2: "ab"
            6, 7, // 3: "c"
            7, 10, // 4: "|Q:" special
            10, 11, // 5: "d"
            11, 13, // 6: "e?"
            13, 16, // 7: "|A:" special
            16, 18, // 8: " f" (straddles: space is template text)
            18, 19, // 9: "g"
            19, 20, // 10: "."
        ];
        let spans = SampleSpans {
            system: Some(CharSpan::new(4, 7)),
            question: CharSpan::new(10, 13),
            answer: CharSpan::new(17, 20),
            text_len: 20,
        };
        let special = vec![
            true, true, false, false, true, false, false, true, false, false, false,
        ];
        (offsets, spans, special)
    }

    fn selected(m: &BatchMasks, k: usize) -> Vec<usize> {
        m.row(k)
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| b.then_some(i))
            .collect()
    }

    fn run(
        offsets: &[u32],
        spans: &[SampleSpans],
        lengths: &[usize],
        special: Option<&[bool]>,
    ) -> Result<BatchMasks> {
        let batch = Batch {
            offsets,
            lengths,
            spans,
            special,
            sample_ids: &[],
            template: "test-template",
        };
        build_masks(&batch, &Strategy::ALL)
    }

    /// `sample()` repeated `n` times: flat offsets, spans and special-token flags.
    fn tiled(n: usize) -> (Vec<u32>, Vec<SampleSpans>, Vec<bool>) {
        let (offsets, spans, special) = sample();
        let flat = offsets.iter().copied().cycle().take(offsets.len() * n);
        let flags = special.iter().copied().cycle().take(special.len() * n);
        (flat.collect(), vec![spans; n], flags.collect())
    }

    /// Masks of one sample (id "q-7", `offsets.len() / 2` tokens, no special-token flags).
    fn one_sample<T: Offset>(
        offsets: &[T],
        spans: SampleSpans,
        strategies: &[Strategy],
    ) -> Result<BatchMasks> {
        let ids = ["q-7".to_string()];
        let batch = Batch {
            offsets,
            lengths: &[offsets.len() / 2],
            spans: &[spans],
            special: None,
            sample_ids: &ids,
            template: "tiny-chatml",
        };
        build_masks(&batch, strategies)
    }

    #[test]
    fn all_strategies_on_one_sample() {
        let (offsets, spans, special) = sample();
        let m = run(&offsets, &[spans], &[11], Some(&special)).unwrap();
        let want: [&[usize]; 8] = [&[2, 3], &[3], &[6], &[7], &[7], &[8], &[10], &[8, 9, 10]];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(selected(&m, k), *w, "{}", Strategy::ALL[k].name());
        }
        assert_eq!(m.tokens[0].answer, TokenSpan { first: 8, end: 11 });
    }

    #[test]
    fn batch_rows_are_per_sample_and_parallel_matches_serial() {
        let (offsets, spans, special) = sample();
        let n = 200; // above PARALLEL_MIN_SAMPLES
        let (flat, all, flags) = tiled(n);
        let m = run(&flat, &all, &vec![11; n], Some(&flags)).unwrap();
        let single = run(&offsets, &[spans], &[11], Some(&special)).unwrap();
        for k in 0..8 {
            for i in 0..n {
                assert_eq!(&m.row(k)[i * 11..(i + 1) * 11], single.row(k));
            }
        }
    }

    #[test]
    fn zero_width_tokens_are_skipped_by_means() {
        let offsets = [0u32, 2, 5, 5, 2, 4];
        let spans = SampleSpans {
            system: None,
            question: CharSpan::new(0, 1),
            answer: CharSpan::new(0, 4),
            text_len: 4,
        };
        // 5 > text_len would be an error if the token were not zero-width.
        let m = one_sample(
            &offsets,
            spans,
            &[Strategy::AnswerMean, Strategy::QuestionLastSpecial],
        )
        .unwrap();
        assert_eq!(selected(&m, 0), vec![0, 2]);
        assert_eq!(selected(&m, 1), vec![1]);
    }

    #[test]
    fn shared_character_tokens_are_allowed() {
        // An emoji split into two byte-level tokens with identical offsets.
        let offsets = [0u32, 1, 1, 2, 1, 2, 2, 3];
        let spans = SampleSpans {
            system: None,
            question: CharSpan::new(0, 1),
            answer: CharSpan::new(1, 2),
            text_len: 3,
        };
        let m = one_sample(
            &offsets,
            spans,
            &[Strategy::AnswerMean, Strategy::AnswerPrevious],
        )
        .unwrap();
        assert_eq!(selected(&m, 0), vec![1, 2]);
        assert_eq!(selected(&m, 1), vec![0]);
    }

    fn error_of(offsets: &[u32], spans: SampleSpans, strategies: &[Strategy]) -> Error {
        one_sample(offsets, spans, strategies).unwrap_err()
    }

    #[test]
    fn errors_name_the_sample() {
        let ok = SampleSpans {
            system: None,
            question: CharSpan::new(0, 2),
            answer: CharSpan::new(2, 4),
            text_len: 4,
        };
        let offsets = [0u32, 2, 2, 4];
        let empty = SampleSpans {
            answer: CharSpan::new(4, 4),
            ..ok
        };
        let e = error_of(&offsets, empty, &[Strategy::AnswerMean]);
        assert!(
            matches!(e, Error::Span(_))
                && e.to_string().contains("'q-7'")
                && e.to_string().contains("empty")
        );

        let outside = SampleSpans {
            answer: CharSpan::new(2, 9),
            ..ok
        };
        let e = error_of(&offsets, outside, &[Strategy::AnswerMean]);
        assert!(matches!(e, Error::Span(_)) && e.to_string().contains("outside"));

        let e = error_of(&[2, 4, 0, 2], ok, &[Strategy::AnswerMean]);
        assert!(e.to_string().contains("not monotone"), "{e}");

        let e = error_of(&offsets, ok, &[Strategy::PersonaMean]);
        assert!(
            matches!(e, Error::Mask(_)) && e.to_string().contains("persona_mean"),
            "{e}"
        );

        let e = error_of(&offsets, ok, &[Strategy::QuestionLastSpecial]);
        assert!(
            e.to_string().contains("tiny-chatml") && e.to_string().contains("q-7"),
            "{e}"
        );

        let first = SampleSpans {
            question: CharSpan::new(2, 4),
            answer: CharSpan::new(0, 2),
            ..ok
        };
        let e = error_of(&offsets, first, &[Strategy::AnswerPrevious]);
        assert!(e.to_string().contains("answer_previous"), "{e}");
    }

    #[test]
    fn shape_errors() {
        let (offsets, spans, _) = sample();
        let e = run(&offsets, &[spans], &[10], None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let e = run(&offsets, &[spans, spans], &[11], None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
    }

    #[test]
    fn first_failing_sample_is_reported() {
        let n = 100;
        let (flat, mut all, flags) = tiled(n);
        for bad in [37, 80] {
            all[bad].answer = CharSpan::new(20, 20);
        }
        let e = run(&flat, &all, &vec![11; n], Some(&flags)).unwrap_err();
        assert!(e.to_string().contains("#37"), "{e}");
    }

    #[test]
    fn negative_offsets_are_an_error_not_a_wrap() {
        let spans = SampleSpans {
            system: None,
            question: CharSpan::new(0, 2),
            answer: CharSpan::new(2, 4),
            text_len: 4,
        };
        let offsets = [0i64, 2, -1, 4];
        let e = one_sample(&offsets, spans, &[Strategy::AnswerMean]).unwrap_err();
        assert!(
            matches!(e, Error::Span(_)) && e.to_string().contains("negative"),
            "{e}"
        );
    }

    #[test]
    fn parse_round_trips() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.name()).unwrap(), s);
        }
        assert!(Strategy::parse("answer").is_err());
    }
}
