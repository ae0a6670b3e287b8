// Detection overlay: one instance per rectangle (box outline, highlight fill or label plate),
// drawn as two triangles inside the paint callback's viewport (the displayed image).

struct Instance {
    // x0, y0, x1, y1 in [0, 1] of the viewport, y down.
    @location(0) rect: vec4<f32>,
    // Premultiplied RGBA.
    @location(1) color: vec4<f32>,
    // x: outline thickness in pixels (0 = filled); yz: rectangle size in pixels.
    @location(2) params: vec4<f32>,
};

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) local: vec2<f32>,
    @location(1) color: vec4<f32>,
    @location(2) params: vec4<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) vertex: u32, instance: Instance) -> VertexOut {
    // Two triangles: (0,0) (1,0) (0,1) / (0,1) (1,0) (1,1).
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
        vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
    );
    let c = corners[vertex];
    let p = mix(instance.rect.xy, instance.rect.zw, c);
    var out: VertexOut;
    out.position = vec4<f32>(p.x * 2.0 - 1.0, 1.0 - p.y * 2.0, 0.0, 1.0);
    out.local = c;
    out.color = instance.color;
    out.params = instance.params;
    return out;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let thickness = in.params.x;
    if (thickness > 0.0) {
        // Outline: keep only fragments within `thickness` pixels of an edge.
        let size = in.params.yz;
        let px = in.local * size;
        let edge = min(min(px.x, px.y), min(size.x - px.x, size.y - px.y));
        if (edge > thickness) {
            discard;
        }
    }
    return in.color;
}
