// Contact sheets: grids of thumbnails (colour or grey) with coloured frames and captions, for
// human review of curation findings and of masks.
#include "internal.hpp"

#include <opencv2/imgproc.hpp>
#include <algorithm>
#include <string>

extern "C" {

int fn_contact_sheet(const FNImage *const *tiles, const int *rows, const int *cols, const uint8_t *bgr,
                     const char *const *labels, int count, int grid_rows, int grid_cols, int tile_size,
                     FNImage **out, FNError *err) {
    if (!tiles || !rows || !cols || !bgr || !out || count < 0 || grid_rows <= 0 || grid_cols <= 0 || tile_size < 32 ||
        int64_t(grid_rows) * grid_cols * tile_size * tile_size > 400000000) {
        fn::set_error(err, "%s", "invalid contact sheet layout");
        return FN_EARG;
    }
    return fn::guarded(err, FN_EINTERNAL, [&]() -> int {
        const int frame = 4, caption = 18, pad = 6;
        const int cellW = tile_size + 2 * frame + pad, cellH = tile_size + 2 * frame + caption + pad;
        cv::Mat sheet(grid_rows * cellH + pad, grid_cols * cellW + pad, CV_8UC3, cv::Scalar(40, 40, 40));
        for (int i = 0; i < count; i++) {
            if (!tiles[i] || rows[i] < 0 || rows[i] >= grid_rows || cols[i] < 0 || cols[i] >= grid_cols) {
                fn::set_error(err, "%s", "contact sheet tile outside the grid or missing");
                return FN_EARG;
            }
            cv::Mat src = tiles[i]->bgr;
            if (src.channels() == 1) cv::cvtColor(src, src, cv::COLOR_GRAY2BGR);  // masks
            double s = double(tile_size) / std::max(src.cols, src.rows);
            cv::Mat thumb;
            cv::resize(src, thumb, cv::Size(std::max(1, int(src.cols * s)), std::max(1, int(src.rows * s))), 0, 0,
                       s < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
            int x0 = pad + cols[i] * cellW, y0 = pad + rows[i] * cellH;
            cv::Scalar colour(bgr[3 * i], bgr[3 * i + 1], bgr[3 * i + 2]);
            cv::rectangle(sheet, cv::Rect(x0, y0, tile_size + 2 * frame, tile_size + 2 * frame), colour, cv::FILLED);
            int ox = x0 + frame + (tile_size - thumb.cols) / 2, oy = y0 + frame + (tile_size - thumb.rows) / 2;
            thumb.copyTo(sheet(cv::Rect(ox, oy, thumb.cols, thumb.rows)));
            if (labels && labels[i]) {
                // Captions are clipped to the cell width rather than wrapped: the full text is in
                // the report; the sheet only needs enough to match a tile to its line.
                std::string text(labels[i]);
                int base = 0;
                while (!text.empty() && cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, &base).width > cellW - pad)
                    text.pop_back();
                cv::putText(sheet, text, cv::Point(x0, y0 + tile_size + 2 * frame + caption - 5), cv::FONT_HERSHEY_SIMPLEX,
                            0.4, cv::Scalar(235, 235, 235), 1, cv::LINE_AA);
            }
        }
        *out = fn::wrap(sheet);
        return FN_OK;
    });
}

} // extern "C"
