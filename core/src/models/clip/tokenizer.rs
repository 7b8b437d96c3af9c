//! CLIP's byte-level BPE tokenizer, context length 77.
//!
//! The vocabulary and rules live in a Hugging Face `tokenizer.json` (the one
//! of [`openai/clip-vit-base-patch32`](https://huggingface.co/openai/clip-vit-base-patch32/blob/main/tokenizer.json)),
//! read with the `tokenizers` crate. Such a file adds `<|startoftext|>` and
//! `<|endoftext|>` but configures no truncation or padding, so both are done
//! here as CLIP does: a prompt longer than the context is cut and ends in
//! `<|endoftext|>` (OpenAI `clip.tokenize(..., truncate=True)`, HF
//! `truncation=True`), and a batch is padded with `<|endoftext|>` (HF's pad
//! token for CLIP). Padding only ever follows the end-of-text token, so with
//! the causal mask it changes no pooled output.
//!
//! [`ClipTokenizer::embedded`] carries the real CLIP vocabulary in the
//! binary (the 2.2 MB `tests/fixtures/clip/tokenizer.json`, which has the
//! layout and ids of the hub file), so the demo model and the real model can
//! tokenize with no file on disk.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// CLIP's text context length.
pub const CONTEXT_LENGTH: usize = 77;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// The real CLIP BPE tokenizer, built into the binary.
static EMBEDDED_TOKENIZER: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/clip/tokenizer.json"));

/// How a batch of prompts is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest prompt of the batch (HF `padding=True`).
    Longest,
    /// To the full context length (HF `padding="max_length"`, OpenAI `clip.tokenize`).
    MaxLength,
}

/// Token ids of a batch of prompts.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[B, T]` u32 ids, padded with `<|endoftext|>`.
    pub input_ids: Tensor,
    /// `[B, T]` u32, 1 for real tokens (start and end included), 0 for padding.
    pub attention_mask: Tensor,
}

/// A CLIP tokenizer: BPE ids with start/end tokens, truncation and padding.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("context_length", &self.context_length)
            .finish()
    }
}

impl ClipTokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("not a tokenizer.json the tokenizers crate can read: {e}"),
        })?;
        Self::from_tokenizer(inner, path)
    }

    /// Parses the bytes of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let origin = Path::new("<tokenizer.json bytes>");
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| Error::Checkpoint {
            path: origin.to_path_buf(),
            reason: format!("not a tokenizer.json the tokenizers crate can read: {e}"),
        })?;
        Self::from_tokenizer(inner, origin)
    }

    /// The real CLIP tokenizer (49,408 tokens) built into the binary.
    pub fn embedded() -> Result<Self> {
        Self::from_bytes(EMBEDDED_TOKENIZER)
    }

    fn from_tokenizer(mut inner: Tokenizer, origin: &Path) -> Result<Self> {
        // Truncation and padding are done here, where CLIP's rules are kept
        // (end-of-text stays last); a file that configures them is overridden.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Checkpoint {
            path: origin.to_path_buf(),
            reason: format!("cannot disable truncation: {e}"),
        })?;
        let special = |tok: &str| {
            inner.token_to_id(tok).ok_or_else(|| Error::Checkpoint {
                path: origin.to_path_buf(),
                reason: format!("no '{tok}' token; this is not a CLIP tokenizer"),
            })
        };
        let (bos, eos) = (special(BOS)?, special(EOS)?);
        Ok(Self { inner, bos, eos, context_length: CONTEXT_LENGTH })
    }

    /// The id of `<|startoftext|>` (49406 for CLIP).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The id of `<|endoftext|>` (49407 for CLIP), also used for padding.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The number of tokens, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `[bos, …, eos]` ids of `text`, cut to the context length with `eos` last.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenize { text: text.to_string(), reason: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.context_length {
            ids.truncate(self.context_length - 1);
            ids.push(self.eos);
        }
        Ok(ids)
    }

    /// Token ids of `texts` as one padded batch on `device`.
    pub fn encode_batch(&self, texts: &[&str], padding: Padding, device: &Device) -> Result<TokenBatch> {
        let seqs = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>>>()?;
        let t = match padding {
            Padding::Longest => seqs.iter().map(Vec::len).max().unwrap_or(0),
            Padding::MaxLength => self.context_length,
        };
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut mask = Vec::with_capacity(seqs.len() * t);
        for s in &seqs {
            ids.extend(s.iter().copied().chain(std::iter::repeat(self.eos)).take(t));
            mask.extend((0..t).map(|j| u32::from(j < s.len())));
        }
        Ok(TokenBatch {
            input_ids: Tensor::from_vec(ids, (seqs.len(), t), device)?,
            attention_mask: Tensor::from_vec(mask, (seqs.len(), t), device)?,
        })
    }
}
