// Geometric perturbations used to generate near-duplicate benchmarks and test inputs.
#include "internal.hpp"

#include <opencv2/imgproc.hpp>
#include <algorithm>

extern "C" {

int fn_image_crop(const FNImage *image, int x, int y, int width, int height, FNImage **out, FNError *err) {
    if (!image || !out) return FN_EARG;
    cv::Rect r = cv::Rect(x, y, width, height) & cv::Rect(0, 0, image->bgr.cols, image->bgr.rows);
    if (r.width <= 0 || r.height <= 0) {
        fn::set_error(err, "%s", "crop rectangle lies outside the image");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        *out = fn::wrap(image->bgr(r).clone());
        return FN_OK;
    });
}

int fn_image_rotate(const FNImage *image, double degrees, FNImage **out, FNError *err) {
    if (!image || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Point2f centre(image->bgr.cols / 2.0f, image->bgr.rows / 2.0f);
        cv::Mat m = cv::getRotationMatrix2D(centre, degrees, 1.0), r;
        cv::warpAffine(image->bgr, r, m, image->bgr.size(), cv::INTER_LINEAR, cv::BORDER_REPLICATE);
        *out = fn::wrap(r);
        return FN_OK;
    });
}

} // extern "C"
