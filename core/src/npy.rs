//! NumPy `.npy` files: the format latents from e4e / pSp / ReStyle and
//! directions from InterFaceGAN / GANSpace are usually saved in.
//!
//! A small reader and writer of the documented format
//! (<https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>):
//! magic `\x93NUMPY`, a version byte pair (1.0 with a 2-byte header length,
//! 2.0 and 3.0 with a 4-byte one), then a Python-literal dict with `descr`,
//! `fortran_order` and `shape`, then the raw data in C order. Only
//! little-endian `f4` / `f8` arrays are read (as f32); Fortran-ordered arrays
//! and object arrays are refused with what to do. Writes are version 1.0,
//! `<f4`, atomic.

use std::path::Path;

use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// An array read from a `.npy` file: its shape and its values (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    parse(&bytes).map_err(|reason| Error::Checkpoint { path: path.to_path_buf(), reason })
}

/// Parses the bytes of a `.npy` file; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic); save the array with numpy.save".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(format!(".npy format version {major}.{minor} is not supported; expected 1.0, 2.0 or 3.0")),
    };
    let end = start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let fortran = dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    if fortran.starts_with("True") {
        return Err("the array is in Fortran order; save it with numpy.save(path, numpy.ascontiguousarray(a))".into());
    }
    // A quoted string: up to its closing quote.
    let quote = descr.chars().next().filter(|c| *c == '\'' || *c == '"').ok_or("the .npy 'descr' is not a string")?;
    let descr = descr[1..].split(quote).next().unwrap_or_default();
    let width = match descr {
        "<f4" | "=f4" | "f4" => 4,
        "<f8" | "=f8" | "f8" => 8,
        d if d.contains('O') => {
            return Err("the array holds Python objects (dtype 'O'), which are never read; save a float array".into())
        }
        d => {
            return Err(format!(
                "dtype '{d}' is not supported; expected little-endian float32 or float64 ('<f4', '<f8')"
            ))
        }
    };
    let shape = parse_shape(shape_text)?;
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("the array is too large")?;
    let data = &bytes[end..];
    if count.checked_mul(width) != Some(data.len()) {
        return Err(format!(
            "shape {shape:?} needs {count} values of {width} bytes, but the file holds {} data bytes",
            data.len()
        ));
    }
    let data = if width == 4 {
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok(Array { shape, data })
}

/// The text after `'key':` in the header dict, up to the end of the dict.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

/// `(18, 512)`, `(512,)`, `()`.
fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text.strip_prefix('(').and_then(|t| t.split(')').next()).ok_or("the .npy 'shape' is not a tuple")?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad dimension '{s}' in the .npy shape")))
        .collect()
}

/// The bytes of a version 1.0 `<f4` `.npy` file of `data` with `shape`.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad with spaces so that the data starts on a 64-byte boundary, ending in '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Writes a version 1.0 `<f4` `.npy` file atomically.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    crate::durable::write(path, &to_bytes(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-`major` file with a hand-written header, as numpy writes it.
    fn file(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn round_trips_and_reads_every_version_and_width() {
        let bytes = to_bytes(&[2, 3], &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]);
        assert_eq!((bytes.len() - 24) % 64, 0, "data starts on a 64-byte boundary");
        let a = parse(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]);
        assert_eq!(parse(&to_bytes(&[4], &[1.0; 4])).unwrap().shape, vec![4]);
        let f8: Vec<u8> = [0.5f64, -1.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        for major in [1, 2, 3] {
            let a = parse(&file(major, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }\n", &f8)).unwrap();
            assert_eq!((a.shape, a.data), (vec![1, 2], vec![0.5, -1.25]));
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_with_reasons() {
        let four = [0u8; 16];
        for (bytes, words) in [
            (b"PK\x03\x04 not npy".to_vec(), "not a .npy file"),
            (file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n", &four), "Fortran order"),
            (file(1, "{'descr': '|O', 'fortran_order': False, 'shape': (4,), }\n", &four), "Python objects"),
            (file(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }\n", &four), "'>f4' is not supported"),
            (file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }\n", &four), "needs 5 values"),
            (file(9, "{}", &four), "version 9.0"),
        ] {
            let e = parse(&bytes).unwrap_err();
            assert!(e.contains(words), "{words}: {e}");
        }
    }
}
