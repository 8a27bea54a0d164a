// Perceptual hashes and bulk descriptor distances for curation.
#include "internal.hpp"

#include <cblas.h>
#include <opencv2/img_hash.hpp>
#include <algorithm>
#include <cmath>
#include <vector>

extern "C" {

int fn_phash(const FNImage *image, uint64_t *out, FNError *err) {
    if (!image || image->bgr.empty() || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat hash;
        cv::img_hash::pHash(image->bgr, hash);
        if (hash.total() != 8 || hash.type() != CV_8U) {
            fn::set_error(err, "%s", "img_hash pHash did not return 8 bytes");
            return FN_EINTERNAL;
        }
        uint64_t h = 0;
        for (int i = 0; i < 8; i++) h |= uint64_t(hash.at<uint8_t>(i)) << (8 * i);
        *out = h;
        return FN_OK;
    });
}

int fn_euclidean_distances(const float *a, int na, const float *b, int nb, int dim, float *out, FNError *err) {
    if (!a || !b || !out || na <= 0 || nb <= 0 || dim <= 0) {
        fn::set_error(err, "%s", "distance blocks must be non-empty");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        // out = −2·a·bᵀ, then add the squared norms: one sgemm does the O(na·nb·dim) part.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, na, nb, dim, -2.0f, a, dim, b, dim, 0.0f, out, nb);
        std::vector<float> nb2(nb);
        for (int j = 0; j < nb; j++) {
            const float *r = b + size_t(j) * dim;
            float s = 0;
            for (int k = 0; k < dim; k++) s += r[k] * r[k];
            nb2[j] = s;
        }
        for (int i = 0; i < na; i++) {
            const float *r = a + size_t(i) * dim;
            float s = 0;
            for (int k = 0; k < dim; k++) s += r[k] * r[k];
            float *row = out + size_t(i) * nb;
            // Rounding can make the squared distance of identical rows slightly negative.
            for (int j = 0; j < nb; j++) row[j] = std::sqrt(std::max(0.0f, row[j] + s + nb2[j]));
        }
        return FN_OK;
    });
}

} // extern "C"
