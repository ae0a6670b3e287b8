//! Generated models with CLIP's exact ONNX interface and **seeded random weights**: a tiny pair
//! for tests, and the full ViT-B/32 shapes for benchmarks (speed does not depend on weight
//! values). They are labelled in their metadata and file names and are never a default.
//!
//! Vision: `pixel_values [N,3,224,224] → image_embeds [N,512]` (patch 32, class token, pre-LN
//! transformer, QuickGELU, LN + projection of the class token). Text: `input_ids [N,77] (int64)
//! → text_embeds [N,512]` (token + position embeddings, causal transformer, the end-of-text
//! token's state, selected by argmax of the ids, projected).

use super::onnx::{Attr, DataType, Dim, Model, Node, Tensor, ValueInfo};
use crate::util::Rng;

/// Metadata key marking generated models.
pub const GENERATED_KEY: &str = "arvis.generated";

/// Transformer sizes for one tower.
#[derive(Debug, Clone, Copy)]
pub struct TowerConfig {
    /// Hidden width.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp: usize,
}

/// A pair of towers and their name.
#[derive(Debug, Clone, Copy)]
pub struct ClipConfig {
    /// The preset's name (`clip-tiny`, `vit-b32`).
    pub name: &'static str,
    /// The image tower.
    pub vision: TowerConfig,
    /// The text tower.
    pub text: TowerConfig,
    /// Width of the shared embedding space.
    pub embed_dim: usize,
}

impl ClipConfig {
    /// Small and fast: for tests.
    pub const TINY: ClipConfig = ClipConfig {
        name: "clip-tiny-random",
        vision: TowerConfig {
            width: 64,
            layers: 2,
            heads: 2,
            mlp: 128,
        },
        text: TowerConfig {
            width: 32,
            layers: 1,
            heads: 2,
            mlp: 64,
        },
        embed_dim: 512,
    };
    /// OpenAI ViT-B/32 shapes (88M vision parameters): for benchmarks.
    pub const VIT_B32: ClipConfig = ClipConfig {
        name: "clip-vit-b32-random",
        vision: TowerConfig {
            width: 768,
            layers: 12,
            heads: 12,
            mlp: 3072,
        },
        text: TowerConfig {
            width: 512,
            layers: 12,
            heads: 8,
            mlp: 2048,
        },
        embed_dim: 512,
    };
}

const PATCH: usize = 32;
const IMAGE: usize = 224;
const TOKENS_VISION: usize = (IMAGE / PATCH) * (IMAGE / PATCH) + 1;
const CONTEXT: usize = 77;
const VOCAB: usize = 49408;

/// Graph under construction: unique names, initializers, nodes.
struct Builder {
    model: Model,
    rng: Rng,
    next: usize,
}

impl Builder {
    fn new(name: &str, seed: u64) -> Builder {
        Builder {
            model: Model {
                name: name.into(),
                opset: 17,
                ..Default::default()
            },
            rng: Rng(seed),
            next: 0,
        }
    }
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }
    fn weight(&mut self, hint: &str, dims: &[usize], std: f32) -> String {
        let name = self.fresh(hint);
        let n = dims.iter().product();
        let data = self.rng.normals(n, std);
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        self.model
            .initializers
            .push(Tensor::f32(&name, &dims, data));
        name
    }
    fn constant_f32(&mut self, hint: &str, dims: &[i64], data: Vec<f32>) -> String {
        let name = self.fresh(hint);
        self.model.initializers.push(Tensor::f32(&name, dims, data));
        name
    }
    fn ints(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.model
            .initializers
            .push(Tensor::i64(&name, &[values.len() as i64], values.to_vec()));
        name
    }
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_lowercase());
        let mut node = Node::new(op, inputs, &[&out]);
        for (k, v) in attrs {
            node = node.attr(k, v);
        }
        self.model.nodes.push(node);
        out
    }
    fn linear(&mut self, x: &str, d_in: usize, d_out: usize, bias: bool) -> String {
        let w = self.weight("w", &[d_in, d_out], 1.0 / (d_in as f32).sqrt());
        let y = self.op("MatMul", &[x, &w], vec![]);
        if bias {
            let b = self.weight("b", &[d_out], 0.02);
            self.op("Add", &[&y, &b], vec![])
        } else {
            y
        }
    }
    fn layer_norm(&mut self, x: &str, d: usize) -> String {
        let scale = self.constant_f32("ln_scale", &[d as i64], vec![1.0; d]);
        let bias = self.constant_f32("ln_bias", &[d as i64], vec![0.0; d]);
        self.op(
            "LayerNormalization",
            &[x, &scale, &bias],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-5))],
        )
    }
    /// One pre-LN residual block; `mask` is added to the attention scores (causal text model).
    fn block(&mut self, x: &str, cfg: TowerConfig, mask: Option<&str>) -> String {
        let (d, h) = (cfg.width, cfg.heads);
        let dh = d / h;
        let n = self.layer_norm(x, d);
        let split = self.ints("heads_shape", &[0, -1, h as i64, dh as i64]);
        let mut heads = Vec::new();
        for perm in [[0i64, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]] {
            let p = self.linear(&n, d, d, true);
            let r = self.op("Reshape", &[&p, &split], vec![]);
            heads.push(self.op(
                "Transpose",
                &[&r],
                vec![("perm", Attr::Ints(perm.to_vec()))],
            ));
        }
        let scores = self.op("MatMul", &[&heads[0], &heads[1]], vec![]);
        let scale = self.constant_f32("attn_scale", &[], vec![1.0 / (dh as f32).sqrt()]);
        let mut scores = self.op("Mul", &[&scores, &scale], vec![]);
        if let Some(mask) = mask {
            scores = self.op("Add", &[&scores, mask], vec![]);
        }
        let attn = self.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let ctx = self.op("MatMul", &[&attn, &heads[2]], vec![]);
        let ctx = self.op(
            "Transpose",
            &[&ctx],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let merge = self.ints("merge_shape", &[0, -1, d as i64]);
        let ctx = self.op("Reshape", &[&ctx, &merge], vec![]);
        let out = self.linear(&ctx, d, d, true);
        let x = self.op("Add", &[x, &out], vec![]);
        let n = self.layer_norm(&x, d);
        let m = self.linear(&n, d, cfg.mlp, true);
        // QuickGELU, as in OpenAI's CLIP: x * sigmoid(1.702 x).
        let k = self.constant_f32("gelu_k", &[], vec![1.702]);
        let scaled = self.op("Mul", &[&m, &k], vec![]);
        let gate = self.op("Sigmoid", &[&scaled], vec![]);
        let m = self.op("Mul", &[&m, &gate], vec![]);
        let m = self.linear(&m, cfg.mlp, d, true);
        self.op("Add", &[&x, &m], vec![])
    }
    fn finish(
        mut self,
        output: &str,
        output_name: &str,
        embed_dim: usize,
        description: &str,
    ) -> Model {
        self.model
            .nodes
            .push(Node::new("Identity", &[output], &[output_name]));
        self.model.outputs.push(ValueInfo {
            name: output_name.into(),
            dtype: DataType::Float,
            dims: vec![Dim::Symbolic("batch".into()), Dim::Fixed(embed_dim as i64)],
        });
        self.model
            .metadata
            .push((GENERATED_KEY.into(), description.into()));
        self.model
    }
}

/// The vision tower with seeded random weights.
pub fn clip_vision(cfg: &ClipConfig, seed: u64) -> Model {
    let v = cfg.vision;
    let mut b = Builder::new(&format!("{}-vision", cfg.name), seed);
    b.model.inputs.push(ValueInfo {
        name: "pixel_values".into(),
        dtype: DataType::Float,
        dims: vec![
            Dim::Symbolic("batch".into()),
            Dim::Fixed(3),
            Dim::Fixed(IMAGE as i64),
            Dim::Fixed(IMAGE as i64),
        ],
    });
    let conv_w = b.weight(
        "patch_w",
        &[v.width, 3, PATCH, PATCH],
        1.0 / ((3 * PATCH * PATCH) as f32).sqrt(),
    );
    let patches = b.op(
        "Conv",
        &["pixel_values", &conv_w],
        vec![
            ("kernel_shape", Attr::Ints(vec![PATCH as i64; 2])),
            ("strides", Attr::Ints(vec![PATCH as i64; 2])),
        ],
    );
    let flat_shape = b.ints("flat", &[0, v.width as i64, -1]);
    let flat = b.op("Reshape", &[&patches, &flat_shape], vec![]);
    let tokens = b.op(
        "Transpose",
        &[&flat],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    // Class token broadcast over the batch: (first patch × 0) + class embedding.
    let (s0, s1, ax) = (b.ints("s0", &[0]), b.ints("s1", &[1]), b.ints("ax", &[1]));
    let first = b.op("Slice", &[&tokens, &s0, &s1, &ax], vec![]);
    let zero = b.constant_f32("zero", &[], vec![0.0]);
    let zeros = b.op("Mul", &[&first, &zero], vec![]);
    let class_emb = b.weight("class_emb", &[v.width], 1.0);
    let cls = b.op("Add", &[&zeros, &class_emb], vec![]);
    let x = b.op("Concat", &[&cls, &tokens], vec![("axis", Attr::Int(1))]);
    let pos = b.weight("pos_emb", &[TOKENS_VISION, v.width], 0.1);
    let x = b.op("Add", &[&x, &pos], vec![]);
    let mut x = b.layer_norm(&x, v.width);
    for _ in 0..v.layers {
        x = b.block(&x, v, None);
    }
    let index = b.constant_index();
    let cls_out = b.op("Gather", &[&x, &index], vec![("axis", Attr::Int(1))]);
    let cls_out = b.layer_norm(&cls_out, v.width);
    let embeds = b.linear(&cls_out, v.width, cfg.embed_dim, false);
    b.finish(
        &embeds,
        "image_embeds",
        cfg.embed_dim,
        &format!(
            "{}: random weights, for tests and benchmarks only, not a real CLIP",
            cfg.name
        ),
    )
}

/// The text tower with seeded random weights.
pub fn clip_text(cfg: &ClipConfig, seed: u64) -> Model {
    let t = cfg.text;
    let mut b = Builder::new(&format!("{}-text", cfg.name), seed);
    b.model.inputs.push(ValueInfo {
        name: "input_ids".into(),
        dtype: DataType::Int64,
        dims: vec![Dim::Symbolic("batch".into()), Dim::Fixed(CONTEXT as i64)],
    });
    let tok = b.weight("token_emb", &[VOCAB, t.width], 1.0);
    let x = b.op("Gather", &[&tok, "input_ids"], vec![("axis", Attr::Int(0))]);
    let pos = b.weight("pos_emb", &[CONTEXT, t.width], 0.1);
    let mut x = b.op("Add", &[&x, &pos], vec![]);
    let mask: Vec<f32> = (0..CONTEXT * CONTEXT)
        .map(|i| if i % CONTEXT > i / CONTEXT { -1e9 } else { 0.0 })
        .collect();
    let mask = b.constant_f32("causal_mask", &[CONTEXT as i64, CONTEXT as i64], mask);
    for _ in 0..t.layers {
        x = b.block(&x, t, Some(&mask));
    }
    let x = b.layer_norm(&x, t.width);
    // The end-of-text token has the largest id: its position is the argmax.
    let eot = b.op(
        "ArgMax",
        &["input_ids"],
        vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(1))],
    );
    let pooled = b.op("GatherND", &[&x, &eot], vec![("batch_dims", Attr::Int(1))]);
    let embeds = b.linear(&pooled, t.width, cfg.embed_dim, false);
    b.finish(
        &embeds,
        "text_embeds",
        cfg.embed_dim,
        &format!(
            "{}: random weights, for tests and benchmarks only, not a real CLIP",
            cfg.name
        ),
    )
}

impl Builder {
    fn constant_index(&mut self) -> String {
        let name = self.fresh("index0");
        self.model.initializers.push(Tensor {
            name: name.clone(),
            dims: vec![],
            data: super::onnx::TensorData::I64(vec![0]),
        });
        name
    }
}
