// Shared internals of the C++ face layer. Not part of the C API.
#pragma once

#include <opencv2/core.hpp>
#include <cstdio>
#include <exception>
#include "face_native.h"

struct FNImage {
    cv::Mat bgr; // CV_8UC3 (images) or CV_8UC1 (masks), continuous
};

namespace fn {

inline void set_error(FNError *err, const char *fmt, const char *detail = "") {
    if (err) std::snprintf(err->message, sizeof(err->message), fmt, detail);
}

// Runs `body`, translating every C++ exception into an error code and message.
template <typename Body>
int guarded(FNError *err, int code_on_exception, Body &&body) {
    try {
        return body();
    } catch (const cv::Exception &e) {
        set_error(err, "opencv: %s", e.what());
    } catch (const std::exception &e) {
        set_error(err, "%s", e.what());
    } catch (...) {
        set_error(err, "%s", "unknown C++ exception");
    }
    return code_on_exception;
}

inline FNImage *wrap(cv::Mat m) {
    auto *img = new FNImage();
    img->bgr = m.isContinuous() ? m : m.clone();
    return img;
}

} // namespace fn
