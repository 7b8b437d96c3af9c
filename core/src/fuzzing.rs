//! Fuzz targets and hostile inputs, shared by the `cargo fuzz` targets in
//! `fuzz/` (libFuzzer, long runs) and the stable property tests in
//! `core/tests/fuzz.rs` (bounded runs in CI), so both exercise exactly the
//! same code.
//!
//! A target takes arbitrary bytes and must return without panicking or
//! hanging, whatever the bytes; the property tests also bound the memory
//! each input may use (4 × the file's size + 64 MiB for a checkpoint).
//!
//! - [`checkpoint`]: the checkpoint reader (`torch::load`, `torch::inspect`)
//!   on a file made of the input: as is (zip, legacy or safetensors, told
//!   apart by content), or with the input as the pickle of a well-formed zip
//!   or legacy container, which lets a fuzzer reach the pickle machine
//!   without first having to forge CRCs and magic numbers.
//! - [`recipe`]: `Recipe::parse` and what a run does with a recipe.
//! - [`declaration`]: the plugin declaration reader, on a byte buffer
//!   standing in for a library's memory.
//! - [`fixture`]: the fixture-directory readers (`config.json` and
//!   `cases.safetensors` of the StyleGAN2 and ArcFace fixtures).
//! - [`hostile`]: the hand-made hostile files of issue 15, and a small
//!   StyleGAN2-ADA network pickle ([`hostile::network_pickle`]) whose
//!   mutations reach the persistent-object and nested-storage readers.
//! - [`Mutator`]: the deterministic mutations the property tests apply to
//!   the seed corpus in `fuzz/corpus/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};

/// The targets, by the names used in `fuzz/` and `fuzz/corpus/`.
pub const TARGETS: [&str; 4] = ["checkpoint", "recipe", "declaration", "fixture"];

/// Runs the target named `name` on `data`; returns the size in bytes of
/// the file the input became (for the memory bound), 0 when none.
pub fn run(name: &str, data: &[u8]) -> usize {
    match name {
        "checkpoint" => checkpoint(data),
        "recipe" => recipe(data),
        "declaration" => declaration(data),
        "fixture" => fixture(data),
        other => panic!("no fuzz target '{other}'"),
    }
}

/// A scratch folder for this thread's inputs (removed by [`cleanup`]).
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let d = std::env::temp_dir().join(format!("lsd-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()))
                .to_string_lossy()
                .replace(['(', ')'], "")
                .into();
            let _ = std::fs::create_dir_all(&d);
            d
        };
    }
    DIR.with(Clone::clone)
}

/// Removes this thread's scratch folder.
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch());
}

fn write_input(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("the scratch folder is writable");
    path
}

/// The checkpoint reader. The first byte chooses how the rest becomes a
/// file: 0–1 as is, 2 as the `data.pkl` of a torch zip with two small
/// storages (`0`, `1`), 3 as the object pickle of a legacy file.
pub fn checkpoint(data: &[u8]) -> usize {
    let (mode, rest) = match data.split_first() {
        Some((m, r)) => (m % 4, r),
        None => (0, data),
    };
    let bytes = match mode {
        2 => hostile::zip(rest, &[("0", vec![0x3f; 256]), ("1", vec![0x40; 64])], false),
        3 => hostile::legacy(rest, &[]),
        _ => rest.to_vec(),
    };
    let path = write_input("ckpt", &bytes);
    let _ = crate::torch::load(&path);
    let _ = crate::torch::inspect(&path);
    let _ = crate::torch::load_with_key(&path, Some("a"));
    bytes.len()
}

/// Recipe parsing, and what a run does with a parsed recipe (resolved YAML,
/// hashes, α draws, locating keys).
pub fn recipe(data: &[u8]) -> usize {
    use crate::recipe::{differing_keys, parse_seeds, Recipe};
    let text = String::from_utf8_lossy(data);
    let _ = parse_seeds(&text);
    let file = scratch().join("fuzz.yaml");
    if let Ok(r) = Recipe::parse(&text, &file) {
        let yaml = r.to_yaml();
        let _ = Recipe::parse(&yaml, &file);
        let _ = (r.hash(), r.training_hash());
        let _ = differing_keys(&text, &r.training_yaml());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(data.len() as u64);
        for _ in 0..16 {
            let a = r.alpha().sample(&mut rng);
            assert!(a.is_finite(), "α {a} drawn from {:?}", r.alpha());
        }
        for key in ["alpha", "terms[0].params", "models.generator", "optimizer.lr", "preview.alphas"] {
            let _ = r.locate(key);
            let _ = r.error_at(key, "x").to_string();
        }
    }
    data.len()
}

/// The fake address of the first byte of a [`declaration`] input.
pub const DECLARATION_BASE: usize = 0x1000;

/// The plugin declaration reader, on the input as memory at
/// [`DECLARATION_BASE`]: the first byte chooses the declaration's offset
/// (0–15, so misaligned ones too), the rest is the memory; pointers inside
/// it are addresses in that space.
pub fn declaration(data: &[u8]) -> usize {
    use crate::plugin::host;
    let Some((&offset, bytes)) = data.split_first() else { return 0 };
    let mem = host::BufferMemory { base: DECLARATION_BASE, bytes };
    let addr = DECLARATION_BASE + (offset % 16) as usize;
    if let Ok(head) = host::read_head(&mem, addr) {
        let host_fp = crate::plugin::Fingerprint::host();
        let _ = host_fp.fields(&head.fingerprint);
        let _ = head.fingerprint.to_string();
        let _ = host::rebuild_command(&host_fp, &head.fingerprint, &head.manifest_dir);
        if host_fp.accepts(&head.fingerprint) {
            let _ = host::read_rest(&mem, addr, &head);
        }
    }
    data.len()
}

/// A valid declaration image for [`declaration`] (offset byte first).
pub fn declaration_seed() -> Vec<u8> {
    let fp = crate::plugin::Fingerprint::host();
    let mut out = vec![0u8];
    out.extend(crate::plugin::host::declaration_image(
        DECLARATION_BASE,
        &fp,
        std::mem::size_of::<crate::plugin::abi::PluginDeclaration>() as u64,
    ));
    out
}

/// The fixture readers: the input is split into `config.json` and
/// `cases.safetensors` (a 4-byte little-endian length of the first part
/// leads), given to the StyleGAN2 and ArcFace fixture checks of a folder
/// without checkpoints (so only the readers run).
pub fn fixture(data: &[u8]) -> usize {
    let (config, cases) = split_fixture(data);
    let dir = scratch().join("fixture");
    let _ = std::fs::create_dir_all(&dir);
    for f in ["generator.pt", "model.pth", "model_legacy.pth", "generator.convert_weight_layout.pt"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::write(dir.join("config.json"), config);
    let _ = std::fs::write(dir.join("cases.safetensors"), cases);
    let dev = candle_core::Device::Cpu;
    let _ = crate::models::stylegan2::check_fixture(&dir, &dev);
    let _ = crate::models::arcface::check_fixture(&dir, &dev);
    data.len()
}

/// The `(config.json, cases.safetensors)` parts of a [`fixture`] input.
pub fn split_fixture(data: &[u8]) -> (&[u8], &[u8]) {
    let Some(len) = data.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) else {
        return (data, &[]);
    };
    let rest = &data[4..];
    rest.split_at(len.min(rest.len()))
}

/// A [`fixture`] input from its two files.
pub fn join_fixture(config: &[u8], cases: &[u8]) -> Vec<u8> {
    let mut out = (config.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(config);
    out.extend_from_slice(cases);
    out
}

/// Hostile files: the cases of issue 15, as builders, so that tests can
/// make them at full size and the seed corpus small.
pub mod hostile {
    use super::*;

    /// A minimal pickle writer (protocol 2 opcodes).
    #[derive(Default)]
    pub struct Pickle(pub Vec<u8>);

    impl Pickle {
        /// Raw bytes.
        pub fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        /// A string (SHORT_BINUNICODE or BINUNICODE).
        pub fn s(&mut self, s: &str) -> &mut Self {
            self.bytes_str(s.as_bytes())
        }
        /// A string from raw bytes (BINUNICODE).
        pub fn bytes_str(&mut self, b: &[u8]) -> &mut Self {
            if b.len() < 256 {
                self.0.push(0x8c);
                self.0.push(b.len() as u8);
            } else {
                self.0.push(b'X');
                self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
            }
            self.op(b)
        }
        /// An int (BININT).
        pub fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.op(&i.to_le_bytes())
        }
        /// LONG_BINPUT / LONG_BINGET.
        pub fn put(&mut self, k: u32) -> &mut Self {
            self.0.push(b'r');
            self.op(&k.to_le_bytes())
        }
        /// LONG_BINGET.
        pub fn get(&mut self, k: u32) -> &mut Self {
            self.0.push(b'j');
            self.op(&k.to_le_bytes())
        }
        /// A `module.name` global.
        pub fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(format!("c{m}\n{n}\n").as_bytes())
        }
        /// An int of any size (BININT or LONG1).
        pub fn num(&mut self, x: i64) -> &mut Self {
            match i32::try_from(x) {
                Ok(v) => self.int(v),
                Err(_) => self.op(&[0x8a, 8]).op(&x.to_le_bytes()),
            }
        }
        fn ints(&mut self, xs: &[i64]) -> &mut Self {
            self.op(b"(");
            for &x in xs {
                self.num(x);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
        /// of a float32 storage `key` of `numel` elements (with the legacy
        /// format's view field when `legacy`).
        pub fn tensor(
            &mut self,
            key: &str,
            numel: i64,
            offset: i64,
            size: &[i64],
            stride: &[i64],
            legacy: bool,
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            self.op(b"(").s("storage").global("torch", "FloatStorage").s(key).s("cpu").num(numel);
            if legacy {
                self.op(b"N");
            }
            self.op(b"tQ").num(offset).ints(size).ints(stride);
            self.op(b"\x89").global("collections", "OrderedDict").op(b")R").op(b"tR")
        }
    }

    /// A torch zip archive: `archive/data.pkl` and one member per storage,
    /// stored, or deflated when `deflate`.
    pub fn zip(pkl: &[u8], storages: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method).large_file(false);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", stored).expect("in memory");
        z.write_all(pkl).expect("in memory");
        z.start_file("archive/byteorder", stored).expect("in memory");
        z.write_all(b"little").expect("in memory");
        for (k, data) in storages {
            z.start_file(format!("archive/data/{k}"), opts).expect("in memory");
            z.write_all(data).expect("in memory");
        }
        z.finish().expect("in memory").into_inner()
    }

    /// A legacy `torch.save` stream around the object pickle `pkl`, with
    /// storage records `(key, f32 data)` in that order.
    pub fn legacy(pkl: &[u8], storages: &[(&str, Vec<f32>)]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"\x80\x02\x8a\x0a");
        f.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
        f.extend_from_slice(b".\x80\x02M\xe9\x03.\x80\x02}(X\x0d\x00\x00\x00little_endian\x88u.");
        f.extend_from_slice(pkl);
        let mut keys = Pickle::default();
        keys.op(b"\x80\x02](");
        for (k, _) in storages {
            keys.s(k);
        }
        keys.op(b"e.");
        f.extend_from_slice(&keys.0);
        for (_, data) in storages {
            f.extend_from_slice(&(data.len() as u64).to_le_bytes());
            f.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        }
        f
    }

    /// `torch.storage._load_from_bytes(b)`, `b` a legacy stream of one
    /// float32 storage `key` holding `data` (as network pickles hold
    /// storages).
    pub fn storage_stream(key: &str, data: &[f32]) -> Vec<u8> {
        let mut obj = Pickle::default();
        obj.op(b"\x80\x02(").s("storage").global("torch", "FloatStorage").s(key).s("cpu").num(data.len() as i64);
        obj.op(b"NtQ.");
        legacy(&obj.0, &[(key, data.to_vec())])
    }

    /// `_rebuild_parameter(_rebuild_tensor_v2(<storage stream>, 0, size,
    /// contiguous stride, False, OrderedDict()), True, OrderedDict())`.
    pub fn stream_parameter(p: &mut Pickle, key: &str, size: &[i64]) {
        let n: i64 = size.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
        let blob = storage_stream(key, &data);
        let mut stride = vec![1i64; size.len()];
        for i in (0..size.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * size[i + 1];
        }
        p.global("torch._utils", "_rebuild_parameter").op(b"(");
        p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        p.global("torch.storage", "_load_from_bytes").op(b"B").op(&(blob.len() as u32).to_le_bytes()).op(&blob);
        p.op(b"\x85R").num(0).ints(size).ints(&stride);
        p.op(b"\x89").global("collections", "OrderedDict").op(b")R").op(b"tR");
        p.op(b"\x88").global("collections", "OrderedDict").op(b")RtR");
    }

    /// A small network pickle in StyleGAN2-ADA's snapshot format:
    /// `{'G_ema': <persistent Generator>, 'D': <persistent Discriminator>,
    /// 'training_set_kwargs': EasyDict(...)}`, the generator with one
    /// parameter, a buffer, a sub-module, NumPy scalar attributes and a
    /// module source that must never run.
    pub fn network_pickle() -> Vec<u8> {
        let mut p = Pickle::default();
        let module = |p: &mut Pickle, class: &str, fill: &dyn Fn(&mut Pickle)| {
            p.global("torch_utils.persistence", "_reconstruct_persistent_obj").op(b"}(");
            p.s("type").s("class").s("version").int(6);
            p.s("module_src").s("import os\nos.system('echo never run')\n");
            p.s("class_name").s(class).s("state").op(b"}(");
            fill(p);
            p.op(b"u").op(b"u\x85R");
        };
        let scalar = |p: &mut Pickle, v: f64| {
            p.global("numpy._core.multiarray", "scalar").global("numpy", "dtype").s("f8").op(b"\x89\x88\x87R");
            p.op(b"(").int(3).s("<").op(b"NNN").int(-1).int(-1).int(0).op(b"tb");
            p.op(b"C\x08").op(&v.to_le_bytes()).op(b"\x86R");
        };
        p.op(b"\x80\x04}(").s("G_ema");
        module(&mut p, "Generator", &|p| {
            p.s("training").op(b"\x89").s("_parameters").op(b"}(").s("weight");
            stream_parameter(p, "140001", &[2, 3]);
            p.op(b"u").s("_buffers").op(b"}(").s("w_avg");
            stream_parameter(p, "140002", &[3]);
            p.op(b"u").s("_non_persistent_buffers_set").op(b"\x8f");
            p.s("_modules").op(b"}(").s("fc0");
            module(p, "FullyConnectedLayer", &|p| {
                p.s("_parameters").op(b"}(").s("bias");
                stream_parameter(p, "140003", &[2]);
                p.op(b"u").s("activation").s("lrelu").s("weight_gain");
                scalar(p, 0.5);
            });
            p.op(b"u").s("conv_clamp").int(256).s("w_dim").int(3);
        });
        p.s("D");
        module(&mut p, "Discriminator", &|p| {
            p.s("_parameters").op(b"}(").s("weight");
            stream_parameter(p, "140004", &[4]);
            p.op(b"u");
        });
        p.s("training_set_kwargs").global("dnnlib.util", "EasyDict").op(b")\x81(").s("resolution").int(64).op(b"u");
        p.op(b"u.");
        p.0
    }

    /// A network pickle whose `G_ema` has `refs` parameters, each a fresh
    /// `_load_from_bytes` of one memoised storage stream of `numel` floats:
    /// every call is a new storage, so only the load's budget stops the
    /// copies.
    pub fn stream_repeated(refs: usize, numel: usize) -> Vec<u8> {
        let blob = storage_stream("1", &vec![0.5; numel]);
        let mut p = Pickle::default();
        p.op(b"\x80\x04}(").s("G_ema").global("torch_utils.persistence", "_reconstruct_persistent_obj").op(b"}(");
        p.s("type").s("class").s("class_name").s("Generator").s("state").op(b"}(").s("_parameters").op(b"}(");
        for i in 0..refs {
            p.s(&format!("p{i}")).global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            p.global("torch.storage", "_load_from_bytes");
            if i == 0 {
                p.op(b"B").op(&(blob.len() as u32).to_le_bytes()).op(&blob).put(0);
            } else {
                p.get(0);
            }
            p.op(b"\x85R").num(0).ints(&[numel as i64]).ints(&[1]);
            p.op(b"\x89").global("collections", "OrderedDict").op(b")R").op(b"tR");
        }
        p.op(b"uu").op(b"u\x85Ru.");
        p.0
    }

    /// A zip whose pickle names one memoised tensor `refs` times, over a
    /// storage of `numel` floats (issue 15: 100 000 × one 64 MiB storage).
    pub fn repeated_tensor(refs: usize, numel: usize) -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(");
        p.s("k0").tensor("0", numel as i64, 0, &[numel as i64], &[1], false).put(0);
        for i in 1..refs {
            p.s(&format!("k{i}")).get(0);
        }
        p.op(b"u.");
        zip(&p.0, &[("0", vec![0u8; numel * 4])], false)
    }

    /// A zip with `views` distinct views of one storage of `numel` floats,
    /// each almost as large as the storage.
    pub fn distinct_views(views: usize, numel: usize) -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(");
        let len = (numel - views) as i64;
        for i in 0..views {
            p.s(&format!("v{i}")).tensor("0", numel as i64, i as i64, &[len], &[1], false);
        }
        p.op(b"u.");
        zip(&p.0, &[("0", vec![0u8; numel * 4])], false)
    }

    /// A zip whose pickle reuses one `key_len`-byte key at every level of
    /// `depth` nested dicts with `per_level` entries each, and holds one
    /// small tensor at the top (issue 15: quadratic name building).
    pub fn nested_keys(key_len: usize, depth: usize, per_level: usize) -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(b"\x80\x02");
        p.bytes_str(&vec![b'k'; key_len]).put(0).op(b"0");
        p.op(b"}(").s("t").tensor("0", 4, 0, &[4], &[1], false).s("n");
        for _ in 0..depth {
            p.op(b"}(");
            for _ in 0..per_level {
                p.get(0).op(b"K\x00");
            }
            p.get(0);
        }
        p.op(b"N");
        for _ in 0..depth {
            p.op(b"u");
        }
        p.op(b"u.");
        zip(&p.0, &[("0", vec![0u8; 16])], false)
    }

    /// A zip whose storage and byteorder members are deflate bombs of
    /// `expanded` bytes each, while the tensor needs 16 bytes.
    pub fn deflate_bomb(expanded: usize) -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(").s("t").tensor("0", 4, 0, &[4], &[1], false).op(b"u.");
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(expanded >= u32::MAX as usize);
        z.start_file("archive/data.pkl", stored).expect("in memory");
        z.write_all(&p.0).expect("in memory");
        let zeros = vec![0u8; 1 << 20];
        for member in ["archive/byteorder", "archive/data/0"] {
            z.start_file(member, deflated).expect("in memory");
            let mut left = expanded;
            while left > 0 {
                let n = left.min(zeros.len());
                z.write_all(&zeros[..n]).expect("in memory");
                left -= n;
            }
        }
        z.finish().expect("in memory").into_inner()
    }

    /// A legacy file naming one memoised tensor `refs` times.
    pub fn legacy_repeated(refs: usize, numel: usize) -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(");
        p.s("k0").tensor("s", numel as i64, 0, &[numel as i64], &[1], true).put(0);
        for i in 1..refs {
            p.s(&format!("k{i}")).get(0);
        }
        p.op(b"u.");
        legacy(&p.0, &[("s", vec![0.5; numel])])
    }

    /// A safetensors file whose one `U8` tensor has a shape of `rank` ones.
    pub fn long_shape(rank: usize) -> Vec<u8> {
        let shape = vec!["1"; rank].join(",");
        let header = format!("{{\"t\":{{\"dtype\":\"U8\",\"shape\":[{shape}],\"data_offsets\":[0,1]}}}}");
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.push(7);
        out
    }

    /// A small valid safetensors file (the seed of the fixture target).
    pub fn small_safetensors() -> Vec<u8> {
        let header = r#"{"latent":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(1.0f32.to_le_bytes().into_iter().chain(2.0f32.to_le_bytes()));
        out
    }

    /// Every hostile file at the size of a seed (tens of kilobytes), with
    /// the name it has in `fuzz/corpus/checkpoint/` (mode byte first).
    pub fn checkpoint_seeds() -> Vec<(String, Vec<u8>)> {
        let raw = |b: Vec<u8>| [vec![0u8], b].concat();
        vec![
            ("hostile-repeated-tensor".into(), raw(repeated_tensor(2000, 256))),
            ("hostile-distinct-views".into(), raw(distinct_views(64, 1024))),
            ("hostile-nested-keys".into(), raw(nested_keys(4096, 20, 50))),
            ("hostile-deflate-bomb".into(), raw(deflate_bomb(4 << 20))),
            ("hostile-legacy-repeated".into(), raw(legacy_repeated(2000, 64))),
            ("hostile-long-shape".into(), raw(long_shape(2000))),
            ("valid-network-pickle".into(), raw(network_pickle())),
            ("hostile-stream-repeated".into(), raw(stream_repeated(200, 256))),
        ]
    }
}

/// Deterministic structure-unaware mutations for the property tests: bit
/// flips, interesting integers, inserted tokens, deleted, duplicated and
/// spliced ranges, truncation. libFuzzer does this (and better, guided by
/// coverage) in the long runs; this is the bounded, reproducible version.
pub struct Mutator {
    rng: rand_chacha::ChaCha8Rng,
    seeds: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    /// Mutates `seeds` (at least one), inserting `tokens` among other
    /// things, with outputs of at most `max_len` bytes; `seed` fixes the
    /// sequence.
    pub fn new(seed: u64, seeds: Vec<Vec<u8>>, tokens: Vec<Vec<u8>>, max_len: usize) -> Self {
        assert!(!seeds.is_empty(), "no seed inputs");
        Self { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), seeds, tokens, max_len }
    }

    /// The next input.
    pub fn next_input(&mut self) -> Vec<u8> {
        let i = self.rng.random_range(0..self.seeds.len());
        let mut d = self.seeds[i].clone();
        let n = 1 + (self.rng.next_u32() % 8) as usize;
        for _ in 0..n {
            self.mutate(&mut d);
        }
        d.truncate(self.max_len);
        d
    }

    fn pos(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.random_range(0..len)
        }
    }

    fn mutate(&mut self, d: &mut Vec<u8>) {
        const INTERESTING: [u64; 12] =
            [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000, u64::MAX, 1 << 40];
        let len = d.len();
        match self.rng.random_range(0..10) {
            0 if len > 0 => {
                let p = self.pos(len);
                d[p] ^= 1 << self.rng.random_range(0..8);
            }
            1 if len > 0 => {
                let p = self.pos(len);
                d[p] = self.rng.random();
            }
            2 if len > 0 => {
                let p = self.pos(len);
                let v = INTERESTING[self.rng.random_range(0..INTERESTING.len())].to_le_bytes();
                let w = [1, 2, 4, 8][self.rng.random_range(0..4)].min(len - p);
                d[p..p + w].copy_from_slice(&v[..w]);
            }
            3 if !self.tokens.is_empty() => {
                let t = self.tokens[self.rng.random_range(0..self.tokens.len())].clone();
                let p = self.pos(len + 1);
                d.splice(p..p, t);
            }
            4 if len > 0 => {
                let a = self.pos(len);
                let b = (a + 1 + self.pos(16.min(len - a))).min(len);
                d.drain(a..b);
            }
            5 if len > 0 => {
                let a = self.pos(len);
                let b = (a + 1 + self.pos(64.min(len - a))).min(len);
                let chunk = d[a..b].to_vec();
                let p = self.pos(len + 1);
                d.splice(p..p, chunk);
            }
            6 => {
                let other = self.seeds[self.rng.random_range(0..self.seeds.len())].clone();
                if !other.is_empty() {
                    let a = self.pos(other.len());
                    let b = (a + 1 + self.pos(256.min(other.len() - a))).min(other.len());
                    let p = self.pos(len + 1);
                    d.splice(p..p, other[a..b].iter().copied());
                }
            }
            7 if len > 1 => {
                let keep = self.pos(len);
                d.truncate(keep.max(1));
            }
            8 => {
                let p = self.pos(len + 1);
                let n = self.rng.random_range(1..8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                d.splice(p..p, bytes);
            }
            _ if len > 0 => {
                let p = self.pos(len);
                d[p] = d[p].wrapping_add(self.rng.random_range(1..4)).wrapping_sub(2);
            }
            _ => d.push(self.rng.random()),
        }
    }
}

/// The tokens [`Mutator`] inserts for a target: pickle opcodes, YAML
/// syntax and recipe keys, JSON and safetensors fragments.
pub fn tokens(target: &str) -> Vec<Vec<u8>> {
    let list: &[&[u8]] = match target {
        "checkpoint" => &[
            b"\x80\x02",
            b"}(",
            b"]",
            b")",
            b"(",
            b"t",
            b"u",
            b"e",
            b"a",
            b"s",
            b"R",
            b"Q",
            b".",
            b"N",
            b"\x85",
            b"\x86",
            b"\x87",
            b"\x88",
            b"\x89",
            b"\x94",
            b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
            b"q\x00",
            b"h\x00",
            b"r\x00\x00\x00\x00",
            b"j\x00\x00\x00\x00",
            b"2",
            b"0",
            b"1",
            b"b",
            b"\x81",
            b"ctorch._utils\n_rebuild_tensor_v2\n",
            b"ctorch\nFloatStorage\n",
            b"ctorch\nHalfStorage\n",
            b"ccollections\nOrderedDict\n",
            b"cargparse\nNamespace\n",
            b"c_codecs\nencode\n",
            b"ctorch._utils\n_rebuild_parameter\n",
            b"ctorch\nSize\n",
            b"\x8c\x07storage",
            b"\x8c\x030",
            b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n",
            b"ctorch.storage\n_load_from_bytes\n",
            b"cdnnlib.util\nEasyDict\n",
            b"cnumpy\ndtype\n",
            b"cnumpy._core.multiarray\nscalar\n",
            b"\x8c\x05class",
            b"\x8c\nclass_name",
            b"\x8c\x05state",
            b"\x8c\x0b_parameters",
            b"\x8c\x08_modules",
            b"\x8c\x03cpu",
            b"J\xff\xff\xff\x7f",
            b"J\x00\x00\x00\x80",
            b"K\x00",
            b"M\xff\xff",
            b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80",
            b"X\xff\xff\xff\x7f",
            b"B\x00\x00\x00\x01",
            b"PK\x03\x04",
            b"PK\x01\x02",
            b"PK\x05\x06",
            b"{\"",
            b"\"dtype\":\"F32\"",
            b"\"shape\":[",
            b"\"data_offsets\":[0,",
            b"]}",
        ],
        "recipe" => &[
            b"\n",
            b"\n  ",
            b"\n    ",
            b"\n      ",
            b"\xc2\xa0",
            b"\t",
            b": ",
            b"- ",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b"&a ",
            b"*a",
            b"!!str ",
            b"!!binary ",
            b"<<: ",
            b"? ",
            b"|",
            b">",
            b"#",
            b"'",
            b"\"",
            b"~",
            b"alpha: ",
            b"{min: -3.0e38, max: 3.0e38}",
            b"min_abs: ",
            b"0.99999994",
            b"params:",
            b"params: {",
            b"terms:\n  - plugin: clip\n",
            b"steps: ",
            b"seeds: ",
            b"batch: ",
            b"layers: [",
            b"models:",
            b"generator: ",
            b"preview:",
            b"alphas: [",
            b"optimizer:",
            b"schedule: {kind: step, every: 0}",
            b"lr: ",
            b"nan",
            b".inf",
            b"-.inf",
            b"1e39",
            b"18446744073709551615",
            b"-1",
            b"0",
            b"mode: latent",
            b"directions: ",
            b"output: ",
            b"device: cuda:",
            b"name: ",
        ],
        "fixture" => &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"\"cases\":",
            b"\"tensors\":[",
            b"\"name\":",
            b"\"recommended_atol\":",
            b"\"mixing_inject_index\":",
            b"\"bn_eps\":",
            b"1e308",
            b"-1",
            b"\"dtype\":\"F32\"",
            b"\"dtype\":\"F16\"",
            b"\"dtype\":\"U8\"",
            b"\"shape\":[",
            b"\"data_offsets\":[",
            b"\"__metadata__\":{",
            b"\xff\xff\xff\xff\xff\xff\xff\x7f",
        ],
        _ => &[b"LSDPLUG2", b"LSDPLUG\x00", b"\x00\x10\x00\x00\x00\x00\x00\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff"],
    };
    list.iter().map(|t| t.to_vec()).collect()
}

/// The seed inputs of `target` kept in `fuzz/corpus/<target>/` under `root`
/// (the repository), plus the built-in ones ([`hostile::checkpoint_seeds`],
/// [`declaration_seed`], …), sorted by name.
pub fn seeds(root: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("fuzz/corpus").join(target)) {
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.push((e.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    match target {
        "checkpoint" => out.extend(hostile::checkpoint_seeds()),
        "declaration" => out.push(("builtin-valid".into(), declaration_seed())),
        "fixture" => out.push((
            "builtin-small".into(),
            join_fixture(b"{\"cases\":{\"tensors\":[]}}", &hostile::small_safetensors()),
        )),
        _ => {}
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}
