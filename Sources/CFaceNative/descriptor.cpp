// Identity descriptors with dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1).
#include "internal.hpp"

#include <dlib/dnn.h>
#include <dlib/image_processing.h>
#include <dlib/opencv/cv_image.h>
#include <memory>
#include <vector>

namespace {

// The layout serialized in dlib_face_recognition_resnet_model_v1.dat, as dlib publishes it: a
// ResNet-34-style metric network on 150×150 RGB chips — a 7×7/2 conv with 32 filters and a 3×3/2
// max-pool, then residual stages of 32 (×3), 64 (down + ×3), 128 (down + ×2), 256 (down + ×2)
// and a final 256 down block, global average pooling and a 128-unit linear layer without bias.
// Every conv block is conv3×3 → affine (frozen batch norm) → relu → conv3×3 → affine;
// down-sampling blocks use stride 2 and an average-pooled skip. deserialize() checks each layer
// type, so a wrong layout fails loudly instead of producing wrong numbers.
using namespace dlib;

template <int N, template <typename> class Norm, int Stride, typename In>
using conv_pair = Norm<con<N, 3, 3, 1, 1, relu<Norm<con<N, 3, 3, Stride, Stride, In>>>>>;

template <template <int, template <typename> class, int, typename> class Block, int N,
          template <typename> class Norm, typename In>
using same_size_residual = add_prev1<Block<N, Norm, 1, tag1<In>>>;

template <template <int, template <typename> class, int, typename> class Block, int N,
          template <typename> class Norm, typename In>
using halving_residual = add_prev2<avg_pool<2, 2, 2, 2, skip1<tag2<Block<N, Norm, 2, tag1<In>>>>>>;

template <int N, typename In> using unit = relu<same_size_residual<conv_pair, N, affine, In>>;
template <int N, typename In> using unit_down = relu<halving_residual<conv_pair, N, affine, In>>;

template <typename In> using stage256_down = unit_down<256, In>;
template <typename In> using stage256 = unit<256, unit<256, unit_down<256, In>>>;
template <typename In> using stage128 = unit<128, unit<128, unit_down<128, In>>>;
template <typename In> using stage64 = unit<64, unit<64, unit<64, unit_down<64, In>>>>;
template <typename In> using stage32 = unit<32, unit<32, unit<32, In>>>;

using face_descriptor_net = loss_metric<fc_no_bias<128, avg_pool_everything<
    stage256_down<stage256<stage128<stage64<stage32<
    max_pool<3, 3, 2, 2, relu<affine<con<32, 7, 7, 2, 2, input_rgb_image_sized<150>>>>>>>>>>>>>;

} // namespace

struct FNDescriptorModel {
    face_descriptor_net net;
};

extern "C" {

int fn_descriptor_create(const char *model_path, FNDescriptorModel **out, FNError *err) {
    if (!model_path || !out) {
        fn::set_error(err, "%s", "a descriptor model path is required");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EMODEL, [&]() -> int {
        auto model = std::make_unique<FNDescriptorModel>();
        dlib::deserialize(model_path) >> model->net;
        *out = model.release();
        return FN_OK;
    });
}

void fn_descriptor_free(FNDescriptorModel *model) { delete model; }

int fn_describe(FNDescriptorModel *model, const FNImage *image, const double *xy68, float *out, FNError *err) {
    if (!model || !image || !xy68 || !out) return FN_EARG;
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        std::vector<dlib::point> parts(68);
        double minX = xy68[0], maxX = xy68[0], minY = xy68[1], maxY = xy68[1];
        for (int i = 0; i < 68; i++) {
            double x = xy68[2 * i], y = xy68[2 * i + 1];
            parts[i] = dlib::point(std::lround(x), std::lround(y));
            minX = std::min(minX, x); maxX = std::max(maxX, x);
            minY = std::min(minY, y); maxY = std::max(maxY, y);
        }
        dlib::full_object_detection shape(
            dlib::rectangle(std::lround(minX), std::lround(minY), std::lround(maxX), std::lround(maxY)), parts);
        dlib::cv_image<dlib::bgr_pixel> img(cvIplImage(image->bgr));
        dlib::matrix<dlib::rgb_pixel> chip;
        dlib::extract_image_chip(img, dlib::get_face_chip_details(shape, FN_CHIP_SIZE, 0.25), chip);
        dlib::matrix<float, 0, 1> d = model->net(chip);
        if (d.size() != FN_DESCRIPTOR_DIM) {
            fn::set_error(err, "%s", "descriptor network returned an unexpected size");
            return FN_EMODEL;
        }
        for (long i = 0; i < d.size(); i++) out[i] = d(i);
        return FN_OK;
    });
}

} // extern "C"
