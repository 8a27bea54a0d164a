// face_mask.h — background removal for aligned face crops, e4e input compositing, image grids.
// Same conventions as face_native.h.
#ifndef PIDIFF_FACE_MASK_H
#define PIDIFF_FACE_MASK_H

#include "face_native.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct FNMaskParams {
    int iterations;          // GrabCut iterations
    double border_fraction;  // crop border band marked sure background (fraction of side)
    double hair_extent;      // head region reaches this many eye-to-chin lengths above the eyes
    double head_width;       // head region half-width in jaw half-widths
    int include_neck;        // 1: neck/clothing below the jaw stay probable foreground
    double feather_sigma;    // Gaussian feather of the final edge, in pixels at this crop size
    unsigned int seed;       // GrabCut's k-means seed: fixed so masks are deterministic
    double skull_core;       // sure foreground above the brows: the skull dome scaled by this
} FNMaskParams;

// GrabCut on an aligned crop seeded from its 68 landmarks (given in crop pixels, x0,y0,…):
// sure foreground = landmark hull (slightly dilated) and the skull's core above the brows;
// probable foreground = the head envelope (jaw line and a dome over it for hair and scalp; the neck
// when asked); sure background = the side and bottom border band outside that envelope (the top
// border is not: hair often reaches it). Morphological clean-up keeps the component holding the
// face, fills holes, then feathers the edge.
// *out is an 8-bit single-channel soft mask (255 = foreground) of the crop's size.
int fn_mask_grabcut(const FNImage *crop, const double *landmarks_xy, const FNMaskParams *params, FNImage **out, FNError *err);

// Runs a face-parsing network (ONNX, via OpenCV DNN) on a crop: input resized to input_size²,
// RGB, (x/255 − mean)/std; output [1, C, H, W] logits; pixels whose argmax class is in `keep`
// become foreground. Feathered like the GrabCut mask. `net_path` is loaded per call site through
// fn_parser_create so a worker reuses one network.
typedef struct FNParser FNParser;
int fn_parser_create(const char *onnx_path, int input_size, const float mean[3], const float std[3], FNParser **out, FNError *err);
void fn_parser_free(FNParser *parser);
int fn_mask_parse(FNParser *parser, const FNImage *crop, const int *keep, int keep_count, double feather_sigma, FNImage **out, FNError *err);

// Runs the network of `parser` (any ONNX model with an image input, e.g. a FairFace-style
// classifier) on `crop` with the parser's input size and normalisation; copies the flattened
// float output into `out` (at most `capacity` values) and its length into *count.
int fn_onnx_forward(FNParser *parser, const FNImage *crop, float *out, int capacity, int *count, FNError *err);

// Checks that a mask (any method) kept the head, from the crop's 68 landmarks. The skull is the
// ellipse centred at eye level (moved across to the jaw midpoint, points 0 and 16) with semi-axes
// jaw half-width across and eye-to-chin length up, scaled by band_scale or outline_scale:
// head_band = foreground share (pixels ≥ 128) of the part of the band_scale skull above the brow
// landmarks 17–26; head_outline = share of 31 points on the outline_scale skull above the eye line
// (15°…165°) that are foreground, points outside the crop left out (1 when fewer than 8 remain);
// far_background = foreground share of the region above the mouth corners and outside the skull
// scaled 1.6 (almost always background: a mask covering much of it swallowed background).
typedef struct FNHeadChecks {
    double head_band;
    int head_band_pixels;
    double head_outline;
    int outline_points;
    double far_background;
    // The head band outside the skull core dome at core_scale and outside the landmark hull
    // (dilated by W/32): the part of the band GrabCut's seed does not force to foreground.
    double head_ring;
    int head_ring_pixels;
} FNHeadChecks;
int fn_mask_head_checks(const FNImage *mask, const double *landmarks_xy, double band_scale, double outline_scale, double core_scale,
                        FNHeadChecks *out, FNError *err);

// Fraction of mask pixels ≥ 128.
double fn_mask_coverage(const FNImage *mask);
// The mask resized to size² (linear), for the 512 mask from a 256 GrabCut or the reverse.
int fn_mask_resize(const FNImage *mask, int size, FNImage **out, FNError *err);
// The mask of a view `scale` (≥ 1) times wider about the same centre, at the same size S: the
// mask of export's context view, whose crop fn_align cuts from the aligned quad scaled about its
// centre. fn_align samples output pixel x at u = (x + ½)/S along the quad, so the wide view's
// pixel x shows the aligned crop's x_a = scale·x − (scale − 1)(S − 1)/2 (same for y). Bilinear
// there, 0 outside the aligned crop; for scale 2 every sample falls between four pixels, so each
// output pixel is the mean of a 2×2 block and the aligned area is the central S/2 square.
int fn_mask_zoom_out(const FNImage *mask, double scale, FNImage **out, FNError *err);
// Value (0–255) of a single-channel image at (x, y), bilinear; −1 outside.
double fn_mask_value_at(const FNImage *mask, double x, double y);

// e4e input: crop·m + white·(1 − m), m = mask blurred with a 5×5 Gaussian (as W+ Adapter does).
int fn_composite_on_white(const FNImage *crop, const FNImage *mask, FNImage **out, FNError *err);


// Draws a heatmap of rows × cols values (row-major) with row/column labels and each cell's
// text (`cell_text`, rows × cols strings; NULL to print the value), colour by value/max.
int fn_draw_heatmap(const double *values, int rows, int cols, const char *const *row_labels, const char *const *col_labels,
                    const char *const *cell_text, const char *title, FNImage **out, FNError *err);

#ifdef __cplusplus
}
#endif

#endif
