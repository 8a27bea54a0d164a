// Decoding, encoding and simple pixel operations on FNImage.
#include "internal.hpp"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <png.h>
#include <zlib.h>
#include <csetjmp>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {

int fn_image_decode(const uint8_t *data, size_t length, int64_t max_pixels, FNImage **out, FNError *err) {
    if (!data || length == 0 || !out) {
        fn::set_error(err, "%s", "empty input");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EDECODE, [&]() -> int {
        cv::Mat buf(1, static_cast<int>(length), CV_8UC1, const_cast<uint8_t *>(data));
        // IMREAD_COLOR applies EXIF orientation and yields 8-bit BGR for grey, RGBA (alpha
        // dropped), 16-bit (scaled) and CMYK JPEG inputs alike. The conversion below only guards
        // against codecs that ignore the flag.
        cv::Mat m = cv::imdecode(buf, cv::IMREAD_COLOR);
        if (m.empty()) {
            fn::set_error(err, "%s", "not a decodable image (corrupt, truncated or unsupported format)");
            return FN_EDECODE;
        }
        if (max_pixels > 0 && static_cast<int64_t>(m.cols) * m.rows > max_pixels) {
            fn::set_error(err, "%s", "decoded image exceeds the pixel limit");
            return FN_EDECODE;
        }
        if (m.type() != CV_8UC3) {
            cv::Mat c;
            if (m.depth() != CV_8U) m.convertTo(m, CV_8U, m.depth() == CV_16U ? 1.0 / 257.0 : 1.0);
            if (m.channels() == 1) cv::cvtColor(m, c, cv::COLOR_GRAY2BGR);
            else if (m.channels() == 4) cv::cvtColor(m, c, cv::COLOR_BGRA2BGR);
            else c = m;
            m = c;
        }
        *out = fn::wrap(m);
        return FN_OK;
    });
}

int fn_image_decode_gray(const uint8_t *data, size_t length, FNImage **out, FNError *err) {
    if (!data || length == 0 || !out) return FN_EARG;
    return fn::guarded(err, FN_EDECODE, [&]() -> int {
        cv::Mat buf(1, static_cast<int>(length), CV_8UC1, const_cast<uint8_t *>(data));
        cv::Mat m = cv::imdecode(buf, cv::IMREAD_GRAYSCALE);
        if (m.empty()) {
            fn::set_error(err, "%s", "not a decodable image");
            return FN_EDECODE;
        }
        *out = fn::wrap(m);
        return FN_OK;
    });
}

int fn_image_from_bgr(const uint8_t *bgr, int width, int height, FNImage **out, FNError *err) {
    if (!bgr || width <= 0 || height <= 0 || !out) {
        fn::set_error(err, "%s", "invalid pixel buffer");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat m(height, width, CV_8UC3, const_cast<uint8_t *>(bgr));
        *out = fn::wrap(m.clone());
        return FN_OK;
    });
}

void fn_image_free(FNImage *image) { delete image; }
int fn_image_width(const FNImage *image) { return image ? image->bgr.cols : 0; }
int fn_image_height(const FNImage *image) { return image ? image->bgr.rows : 0; }
int fn_image_channels(const FNImage *image) { return image ? image->bgr.channels() : 0; }

int fn_image_copy_bgr(const FNImage *image, uint8_t *dst, size_t capacity, FNError *err) {
    if (!image || !dst) return FN_EARG;
    size_t need = image->bgr.total() * image->bgr.channels();
    if (capacity < need) {
        fn::set_error(err, "%s", "destination buffer too small");
        return FN_EARG;
    }
    std::memcpy(dst, image->bgr.data, need);
    return FN_OK;
}

static int encode(const FNImage *image, const char *ext, const std::vector<int> &params, uint8_t **out, size_t *length, FNError *err) {
    if (!image || !out || !length) return FN_EARG;
    return fn::guarded(err, FN_EENCODE, [&]() -> int {
        std::vector<uint8_t> bytes;
        if (!cv::imencode(ext, image->bgr, bytes, params)) {
            fn::set_error(err, "%s", "imencode failed");
            return FN_EENCODE;
        }
        *out = static_cast<uint8_t *>(std::malloc(bytes.size()));
        if (!*out) return FN_EINTERNAL;
        std::memcpy(*out, bytes.data(), bytes.size());
        *length = bytes.size();
        return FN_OK;
    });
}

int fn_image_encode_png(const FNImage *image, uint8_t **out, size_t *length, FNError *err) {
    if (!image || !out || !length) return FN_EARG;
    const cv::Mat &m = image->bgr;
    if (m.depth() != CV_8U || (m.channels() != 1 && m.channels() != 3) || m.empty()) {
        fn::set_error(err, "%s", "PNG needs an 8-bit grey or BGR image");
        return FN_EARG;
    }
    // libpng directly, for settings OpenCV 4.6 does not expose: every row filtered "up" and zlib
    // level 1 with run-length matching. On a 512² face crop (`pidiff-data bench ingest`) this took
    // 6.3 ms and 308 KB where OpenCV's level 1 (all filters tried on every row) took 13 ms and
    // 315 KB. Deterministic: the same pixels give the same bytes.
    struct Sink {
        uint8_t *data = nullptr;
        size_t size = 0, capacity = 0;
        bool failed = false;
    } sink;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_write_struct(&png, nullptr);
        fn::set_error(err, "%s", "libpng: out of memory");
        return FN_EENCODE;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        std::free(sink.data);
        fn::set_error(err, "%s", "libpng could not encode the image");
        return FN_EENCODE;
    }
    png_set_write_fn(png, &sink, [](png_structp p, png_bytep bytes, png_size_t n) {
        auto *s = static_cast<Sink *>(png_get_io_ptr(p));
        if (s->size + n > s->capacity) {
            size_t grown = std::max(s->capacity * 2, s->size + n);
            auto *bigger = static_cast<uint8_t *>(std::realloc(s->data, grown));
            if (!bigger) png_error(p, "out of memory");
            s->data = bigger;
            s->capacity = grown;
        }
        std::memcpy(s->data + s->size, bytes, n);
        s->size += n;
    }, nullptr);
    png_set_IHDR(png, info, m.cols, m.rows, 8, m.channels() == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_BASE, PNG_FILTER_TYPE_BASE);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_UP);
    png_set_compression_level(png, 1);
    png_set_compression_strategy(png, Z_RLE);
    png_write_info(png, info);
    if (m.channels() == 3) png_set_bgr(png);
    for (int y = 0; y < m.rows; y++) png_write_row(png, const_cast<png_bytep>(m.ptr<uint8_t>(y)));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    *out = sink.data;
    *length = sink.size;
    return FN_OK;
}

int fn_image_encode_jpeg(const FNImage *image, int quality, uint8_t **out, size_t *length, FNError *err) {
    return encode(image, ".jpg", {cv::IMWRITE_JPEG_QUALITY, quality}, out, length, err);
}

void fn_buffer_free(uint8_t *buffer) { std::free(buffer); }

int fn_image_resize(const FNImage *image, int width, int height, FNImage **out, FNError *err) {
    if (!image || width <= 0 || height <= 0 || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat r;
        bool shrink = width < image->bgr.cols || height < image->bgr.rows;
        cv::resize(image->bgr, r, cv::Size(width, height), 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
        *out = fn::wrap(r);
        return FN_OK;
    });
}

double fn_image_sharpness(const FNImage *image) {
    if (!image || image->bgr.empty()) return 0;
    try {
        cv::Mat gray, lap;
        cv::cvtColor(image->bgr, gray, cv::COLOR_BGR2GRAY);
        cv::Laplacian(gray, lap, CV_64F);
        cv::Scalar mean, stddev;
        cv::meanStdDev(lap, mean, stddev);
        return stddev[0] * stddev[0];
    } catch (...) {
        return 0;
    }
}

int fn_image_adjust(const FNImage *image, double gain, double bias, FNImage **out, FNError *err) {
    if (!image || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        cv::Mat r;
        image->bgr.convertTo(r, CV_8UC3, gain, bias);
        *out = fn::wrap(r);
        return FN_OK;
    });
}

} // extern "C"
