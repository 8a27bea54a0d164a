// face_native.h — the only surface between Swift and the C++ face layer (OpenCV 4.6, dlib 19.24).
//
// Conventions: opaque handles; every fallible call returns FN_OK (0) or an FN_E* code and fills
// FNError.message with a human-readable reason. No C++ exception crosses this boundary.
// Images are 8-bit, 3-channel BGR in memory after decoding, whatever the file held.
#ifndef PIDIFF_FACE_NATIVE_H
#define PIDIFF_FACE_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    FN_OK = 0,
    FN_EDECODE = 1,   // bytes are not a decodable image
    FN_EARG = 2,      // invalid argument (null, bad size)
    FN_EMODEL = 3,    // model file missing or unreadable
    FN_EINTERNAL = 4, // an OpenCV/dlib error we did not expect
    FN_EENCODE = 5,   // encoding an output image failed
};

typedef struct FNError {
    char message[512];
} FNError;

typedef struct FNImage FNImage;
typedef struct FNFaceModel FNFaceModel;

// Decodes an encoded image (JPEG, PNG, WebP, BMP, …). EXIF orientation is applied; grayscale,
// RGBA, 16-bit and CMYK inputs are converted to 8-bit BGR. `max_pixels` (> 0) is a last line of
// defence against decompression bombs (callers check the header before calling).
int fn_image_decode(const uint8_t *data, size_t length, int64_t max_pixels, FNImage **out, FNError *err);
// Decodes a single-channel image (a stored mask) as 8-bit grey.
int fn_image_decode_gray(const uint8_t *data, size_t length, FNImage **out, FNError *err);
// Wraps a copy of tightly packed 8-bit BGR pixels (used by tests and generators).
int fn_image_from_bgr(const uint8_t *bgr, int width, int height, FNImage **out, FNError *err);
void fn_image_free(FNImage *image);
int fn_image_width(const FNImage *image);
int fn_image_height(const FNImage *image);
int fn_image_channels(const FNImage *image);
// Copies the pixels out, tightly packed (width*height*channels bytes; BGR order for colour).
int fn_image_copy_bgr(const FNImage *image, uint8_t *dst, size_t capacity, FNError *err);
// PNG-encodes (deterministic bytes for identical pixels). Free *out with fn_buffer_free.
int fn_image_encode_png(const FNImage *image, uint8_t **out, size_t *length, FNError *err);
int fn_image_encode_jpeg(const FNImage *image, int quality, uint8_t **out, size_t *length, FNError *err);
void fn_buffer_free(uint8_t *buffer);
// Resizes (area interpolation when shrinking, linear otherwise).
int fn_image_resize(const FNImage *image, int width, int height, FNImage **out, FNError *err);
// Variance of the Laplacian of the grayscale image: a standard focus/sharpness measure.
double fn_image_sharpness(const FNImage *image);
// Mean brightness scaled by `gain` plus `bias`, saturating; used to perturb benchmark inputs.
int fn_image_adjust(const FNImage *image, double gain, double bias, FNImage **out, FNError *err);

enum { FN_DETECTOR_HOG = 0, FN_DETECTOR_MMOD = 1 };

typedef struct FNFaceBox {
    double left, top, right, bottom; // original-image pixels
    double score;                    // detector confidence
} FNFaceBox;

// A face model bundles one detector and one 68-point shape predictor. dlib's detectors are not
// thread-safe: create one model per worker.
int fn_model_create(int detector_kind, const char *mmod_path, const char *predictor68_path, FNFaceModel **out, FNError *err);
void fn_model_free(FNFaceModel *model);
// A model for another worker: its own detector (a copy), the same shape predictor (dlib's is safe
// to use from several threads at once). Only `model` being read meanwhile is safe.
int fn_model_clone(const FNFaceModel *model, FNFaceModel **out, FNError *err);
// Detects faces. The image is shrunk so its longer side is at most `max_side` (0 = never) before
// detection and boxes are mapped back. Writes at most `capacity` boxes sorted by area,
// largest first; *count receives the number found (which may exceed capacity).
int fn_detect(FNFaceModel *model, const FNImage *image, int upsample, int max_side,
              FNFaceBox *boxes, int capacity, int *count, FNError *err);
// What fn_detect_cascade scanned (bits of *passes).
enum { FN_PASS_COARSE = 1, FN_PASS_ALL_LEVELS = 2, FN_PASS_UPSAMPLED = 4, FN_PASS_UPSAMPLED_FINE = 8 };
// HOG only. dlib's frontal detector on the copy shrunk to `max_side`, scanned coarse to fine, as
// far as the photo needs. A "lone large face" is exactly one box found, at least `lone_face_box`
// pixels wide in the copy. (1) The pyramid levels whose longer side is at most `coarse_side` (0:
// none apart), then one finer level at a time while nothing is found or a lone large face's box
// comes from the finest level scanned; a lone large face from a coarser level ends it there. (2) Every level, i.e. fn_detect without
// upsampling; a lone large face, or `upsample` 0, ends it. (3) Nothing found: fn_detect with
// `upsample`. Otherwise the levels of the `upsample`d copy finer than the copy itself, adding the
// faces (2) did not find; (2)'s boxes are kept as they are. Output as fn_detect.
int fn_detect_cascade(FNFaceModel *model, const FNImage *image, int upsample, int max_side, int coarse_side,
                      int lone_face_box, FNFaceBox *boxes, int capacity, int *count, int *passes, FNError *err);
// 68 landmarks inside `box`, as x0,y0,x1,y1,… in original-image pixels (136 doubles).
int fn_landmarks68(FNFaceModel *model, const FNImage *image, const FNFaceBox *box, double *xy, FNError *err);

// FFHQ / e4e alignment of `quad` (4 corners x,y: c−x−y, c−x+y, c+x+y, c+x−y) to an
// out_size × out_size crop, following e4e's align_face: integer pre-shrink for large quads, crop
// with a border, reflect padding blended toward a blur and the median colour where the quad
// leaves the image, then a single bilinear warpAffine (the quad is a similarity transform).
// *padded is set to 1 when padding was needed.
int fn_align(const FNImage *image, const double quad[8], int out_size, FNImage **out, int *padded, FNError *err);

#ifdef __cplusplus
}
#endif

// Curation entry points (descriptors, hashes, distances, contact sheets).
#include "face_curation.h"

#endif
