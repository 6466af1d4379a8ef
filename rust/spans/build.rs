//! Checking a batch and building its token spans and masks (the rules in the module docs).

use rayon::prelude::*;

use super::{Batch, BatchMasks, CharSpan, Offset, SampleTokens, Strategy, TokenSpan};
use crate::error::{Error, Result};

/// Samples below this count are processed on the calling thread (rayon overhead dominates).
const PARALLEL_MIN_SAMPLES: usize = 64;

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
