// face_curation.h — the C surface of the curation stage: identity descriptors (dlib's face
// recognition ResNet), perceptual hashes, bulk descriptor distances and contact sheets.
// Same conventions as face_native.h (which includes this file): opaque handles, FN_* codes,
// a message in FNError, no C++ exception across the boundary.
#ifndef PIDIFF_FACE_CURATION_H
#define PIDIFF_FACE_CURATION_H

#include <stddef.h>
#include <stdint.h>

#include "face_native.h" // FNImage, FNError, FN_* codes

#ifdef __cplusplus
extern "C" {
#endif

enum { FN_DESCRIPTOR_DIM = 128, FN_CHIP_SIZE = 150 };

typedef struct FNDescriptorModel FNDescriptorModel;

// Loads dlib_face_recognition_resnet_model_v1.dat. A forward pass keeps per-layer state, so the
// model is not thread-safe: one per worker.
int fn_descriptor_create(const char *model_path, FNDescriptorModel **out, FNError *err);
void fn_descriptor_free(FNDescriptorModel *model);
// The 128-D identity descriptor of one face: a 150×150 chip is cut from `image` with dlib's
// get_face_chip_details (padding 0.25) fitted to the 68 landmarks `xy68` (x0,y0,x1,y1,… in
// `image` pixels), then run through the network. Same person ⇔ Euclidean distance < ~0.6.
int fn_describe(FNDescriptorModel *model, const FNImage *image, const double *xy68, float *out, FNError *err);

// OpenCV img_hash pHash (DCT of the 32×32 grey image, 64 bits). Byte i of OpenCV's 8-byte hash
// becomes bits 8i…8i+7 of *out, so Hamming distance is popcount(a ^ b).
int fn_phash(const FNImage *image, uint64_t *out, FNError *err);

// Euclidean distances between the rows of a (na × dim) and b (nb × dim), row-major float32,
// into out (na × nb): |a|² + |b|² − 2·a·bᵀ with one OpenBLAS sgemm. Callers pass blocks, so
// no N × N matrix is ever needed.
int fn_euclidean_distances(const float *a, int na, const float *b, int nb, int dim, float *out, FNError *err);

// A contact sheet: `count` tiles placed at (rows[i], cols[i]) of a grid of tile_size cells, each
// resized to fit, framed in colour bgr[3i..3i+2] and captioned with labels[i] (may be null).
int fn_contact_sheet(const FNImage *const *tiles, const int *rows, const int *cols, const uint8_t *bgr,
                     const char *const *labels, int count, int grid_rows, int grid_cols, int tile_size,
                     FNImage **out, FNError *err);

// Perturbations for the near-duplicate benchmark and tests: a crop (clamped to the image) and a
// rotation about the centre by `degrees` (counter-clockwise, same size, border replicated).
int fn_image_crop(const FNImage *image, int x, int y, int width, int height, FNImage **out, FNError *err);
int fn_image_rotate(const FNImage *image, double degrees, FNImage **out, FNError *err);

#ifdef __cplusplus
}
#endif

#endif
