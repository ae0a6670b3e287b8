//! The wgpu overlay pass: detection boxes, highlights and label plates as instanced rectangles,
//! drawn by an egui paint callback over the displayed frame (text stays with egui). Also the
//! frame texture, written in place each frame instead of being re-created.

use eframe::egui;
use eframe::egui_wgpu::wgpu;
use eframe::egui_wgpu::{self, CallbackResources, CallbackTrait, RenderState, ScreenDescriptor};
use image::RgbImage;

/// One rectangle for the shader; see `shaders/overlay.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OverlayRect {
    /// x0, y0, x1, y1 in [0, 1] of the view, y down.
    pub rect: [f32; 4],
    /// Premultiplied RGBA in gamma space (as egui paints).
    pub color: [f32; 4],
    /// Outline thickness in pixels (0 = filled), rectangle width and height in pixels, unused.
    pub params: [f32; 4],
}

impl OverlayRect {
    /// `rect` in view-normalised coordinates; `view_px` the view's size in physical pixels.
    pub fn new(
        rect: [f32; 4],
        color: egui::Color32,
        thickness_px: f32,
        view_px: egui::Vec2,
    ) -> Self {
        // egui paints in gamma space into a non-sRGB target; Color32 is already premultiplied.
        OverlayRect {
            rect,
            color: color.to_normalized_gamma_f32(),
            params: [
                thickness_px,
                (rect[2] - rect[0]) * view_px.x,
                (rect[3] - rect[1]) * view_px.y,
                0.0,
            ],
        }
    }
}

/// GPU objects owned by egui's renderer (in its callback resources), created once.
struct OverlayPipeline {
    pipeline: wgpu::RenderPipeline,
}

/// Create the overlay pipeline; call once when the app starts.
pub fn install(render_state: &RenderState) {
    let device = &render_state.device;
    let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("arvis overlay"),
        source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/overlay.wgsl").into()),
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("arvis overlay"),
        bind_group_layouts: &[],
        immediate_size: 0,
    });
    let attributes = wgpu::vertex_attr_array![0 => Float32x4, 1 => Float32x4, 2 => Float32x4];
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("arvis overlay"),
        layout: Some(&layout),
        vertex: wgpu::VertexState {
            module: &shader,
            entry_point: Some("vs_main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            buffers: &[Some(wgpu::VertexBufferLayout {
                array_stride: std::mem::size_of::<OverlayRect>() as u64,
                step_mode: wgpu::VertexStepMode::Instance,
                attributes: &attributes,
            })],
        },
        fragment: Some(wgpu::FragmentState {
            module: &shader,
            entry_point: Some("fs_main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: render_state.target_format,
                blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        multiview_mask: None,
        cache: None,
    });
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(OverlayPipeline { pipeline });
}

/// The paint callback for one view's overlay. Each has its own instance buffer, so several
/// views in one window (the grid) each draw their own rectangles.
pub struct OverlayCallback {
    /// The rectangles to draw, in view-relative coordinates.
    pub rects: Vec<OverlayRect>,
    /// Written once in `prepare`, drawn in `paint`.
    instances: std::sync::OnceLock<wgpu::Buffer>,
}

impl OverlayCallback {
    /// Queue the overlay of `rects` over `view` on the painter.
    pub fn paint(painter: &egui::Painter, view: egui::Rect, rects: Vec<OverlayRect>) {
        painter.add(egui_wgpu::Callback::new_paint_callback(
            view,
            OverlayCallback {
                rects,
                instances: std::sync::OnceLock::new(),
            },
        ));
    }
}

impl CallbackTrait for OverlayCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if self.rects.is_empty() || resources.get::<OverlayPipeline>().is_none() {
            return Vec::new();
        }
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("arvis overlay instances"),
            size: std::mem::size_of_val(self.rects.as_slice()) as u64,
            usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&self.rects));
        let _ = self.instances.set(buffer);
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        let (Some(overlay), Some(instances)) =
            (resources.get::<OverlayPipeline>(), self.instances.get())
        else {
            return;
        };
        render_pass.set_pipeline(&overlay.pipeline);
        render_pass.set_vertex_buffer(0, instances.slice(..));
        render_pass.draw(0..6, 0..self.rects.len() as u32);
    }
}

/// The displayed frame: one GPU texture registered with egui, rewritten in place each frame and
/// re-created only when the frame size changes.
pub struct FrameTexture {
    texture: wgpu::Texture,
    /// The texture's id for egui.
    pub id: egui::TextureId,
    /// Its size in pixels.
    pub size: (u32, u32),
    rgba: Vec<u8>,
}

impl FrameTexture {
    /// Upload `image`, reusing `existing` when the size matches.
    pub fn upload(
        render_state: &RenderState,
        existing: Option<FrameTexture>,
        image: &RgbImage,
    ) -> FrameTexture {
        let size = image.dimensions();
        let mut tex = match existing {
            Some(t) if t.size == size => t,
            other => {
                let texture = render_state
                    .device
                    .create_texture(&wgpu::TextureDescriptor {
                        label: Some("arvis frame"),
                        size: wgpu::Extent3d {
                            width: size.0,
                            height: size.1,
                            depth_or_array_layers: 1,
                        },
                        mip_level_count: 1,
                        sample_count: 1,
                        dimension: wgpu::TextureDimension::D2,
                        format: wgpu::TextureFormat::Rgba8UnormSrgb,
                        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                        view_formats: &[],
                    });
                let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
                let mut renderer = render_state.renderer.write();
                let id = match other {
                    Some(old) => {
                        renderer.update_egui_texture_from_wgpu_texture(
                            &render_state.device,
                            &view,
                            wgpu::FilterMode::Linear,
                            old.id,
                        );
                        old.id
                    }
                    None => renderer.register_native_texture(
                        &render_state.device,
                        &view,
                        wgpu::FilterMode::Linear,
                    ),
                };
                FrameTexture {
                    texture,
                    id,
                    size,
                    rgba: Vec::new(),
                }
            }
        };
        tex.rgba.clear();
        tex.rgba.reserve(image.as_raw().len() / 3 * 4);
        for px in image.as_raw().chunks_exact(3) {
            tex.rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
        render_state.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &tex.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            &tex.rgba,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(4 * size.0),
                rows_per_image: Some(size.1),
            },
            wgpu::Extent3d {
                width: size.0,
                height: size.1,
                depth_or_array_layers: 1,
            },
        );
        tex
    }
}
