// Conv2D (+ bias, + optional ReLU) for MindSpore's CPU backend as an AOT custom op, run by the
// oneDNN library that ships inside the MindSpore wheel (lib/libdnnl.so.2, oneDNN 2.2,
// threadpool runtime).
//
// Why: MindSpore's own CPU Conv2D hands oneDNN plain NCHW tensors, for which oneDNN picks
// im2col + GEMM (gemm:jit). Here the convolution is created with format "any", so oneDNN picks
// its direct kernels for the layouts they want (brgconv:avx512_core with channels-last
// activations on AVX-512 machines), and bias and ReLU are fused into it.
//
// No oneDNN headers ship with the wheel: the few C API entry points used are declared below
// from the oneDNN 2.x C API (dnnl.h / dnnl_types.h / dnnl_threadpool_iface.hpp). Descriptor
// structs are only ever handled through pointers, so opaque, generously sized buffers stand in
// for them.
//
// MindSpore AOT calling convention (CPU): params = inputs then outputs,
//   inputs: x (N, C, H, W) or (N, H, W, C) f32, weight (O, C / groups, KH, KW) f32, bias (O) f32,
//           settings (7) int64 = [stride, padding, groups, relu, x_is_nhwc, y_is_nhwc, weights_id]
//   output: y (N, O, OH, OW) or (N, OH, OW, O) f32
// oneDNN's fast kernels keep activations channels-last, so a chain of these ops passes NHWC
// tensors from one to the next and only the first and last reorder. Weights are reordered into
// oneDNN's layout once per (weights_id, plan) and kept until RepVGGOneDNNRelease(weights_id):
// the caller guarantees that a weights_id always comes with the same weight values.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

// ------------------------------------------------------------------ oneDNN 2.x C API subset
extern "C" {
typedef int dnnl_status_t;
typedef int64_t dnnl_dims_t[12];
typedef struct dnnl_engine *dnnl_engine_t;
typedef struct dnnl_stream *dnnl_stream_t;
typedef struct dnnl_memory *dnnl_memory_t;
typedef struct dnnl_primitive_desc *dnnl_primitive_desc_t;
typedef struct dnnl_primitive *dnnl_primitive_t;
typedef struct dnnl_primitive_attr *dnnl_primitive_attr_t;
typedef struct dnnl_post_ops *dnnl_post_ops_t;
typedef struct {
    int arg;
    dnnl_memory_t memory;
} dnnl_exec_arg_t;

dnnl_status_t dnnl_engine_create(dnnl_engine_t *engine, int kind, size_t index);
dnnl_status_t dnnl_threadpool_interop_stream_create(dnnl_stream_t *stream, dnnl_engine_t engine,
                                                    void *threadpool);
dnnl_status_t dnnl_stream_wait(dnnl_stream_t stream);
dnnl_status_t dnnl_memory_desc_init_by_strides(void *md, int ndims, const dnnl_dims_t dims,
                                               int data_type, const dnnl_dims_t strides);
dnnl_status_t dnnl_memory_desc_init_by_tag(void *md, int ndims, const dnnl_dims_t dims,
                                           int data_type, int format_tag);
int dnnl_memory_desc_equal(const void *lhs, const void *rhs);
size_t dnnl_memory_desc_get_size(const void *md);
dnnl_status_t dnnl_memory_create(dnnl_memory_t *memory, const void *md, dnnl_engine_t engine,
                                 void *handle);
dnnl_status_t dnnl_memory_set_data_handle(dnnl_memory_t memory, void *handle);
dnnl_status_t dnnl_convolution_forward_desc_init(void *conv_desc, int prop_kind, int alg_kind,
                                                 const void *src_md, const void *weights_md,
                                                 const void *bias_md, const void *dst_md,
                                                 const dnnl_dims_t strides,
                                                 const dnnl_dims_t padding_l,
                                                 const dnnl_dims_t padding_r);
dnnl_status_t dnnl_primitive_attr_create(dnnl_primitive_attr_t *attr);
dnnl_status_t dnnl_post_ops_create(dnnl_post_ops_t *post_ops);
dnnl_status_t dnnl_post_ops_append_eltwise(dnnl_post_ops_t post_ops, float scale, int alg_kind,
                                           float alpha, float beta);
dnnl_status_t dnnl_primitive_attr_set_post_ops(dnnl_primitive_attr_t attr,
                                               dnnl_post_ops_t post_ops);
dnnl_status_t dnnl_primitive_desc_create(dnnl_primitive_desc_t *pd, const void *op_desc,
                                         dnnl_primitive_attr_t attr, dnnl_engine_t engine,
                                         const void *hint_forward_pd);
dnnl_status_t dnnl_reorder_primitive_desc_create(dnnl_primitive_desc_t *pd, const void *src_md,
                                                 dnnl_engine_t src_engine, const void *dst_md,
                                                 dnnl_engine_t dst_engine,
                                                 dnnl_primitive_attr_t attr);
const void *dnnl_primitive_desc_query_md(dnnl_primitive_desc_t pd, int what, int index);
dnnl_status_t dnnl_primitive_desc_query(dnnl_primitive_desc_t pd, int what, int index,
                                        void *result);
dnnl_status_t dnnl_primitive_create(dnnl_primitive_t *primitive, dnnl_primitive_desc_t pd);
dnnl_status_t dnnl_primitive_execute(dnnl_primitive_t primitive, dnnl_stream_t stream, int nargs,
                                     const dnnl_exec_arg_t *args);
}

namespace {
constexpr int kCpuEngine = 1;
constexpr int kF32 = 3;
constexpr int kFormatAny = 1;
constexpr int kForwardInference = 96;
constexpr int kConvolutionDirect = 0x1;
constexpr int kEltwiseRelu = 0x1f;
constexpr int kQuerySrcMd = 129, kQueryWeightsMd = 131, kQueryDstMd = 133;
constexpr int kQueryImplInfoStr = 8;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgBias = 41;
constexpr size_t kMdBytes = 4096;        // sizeof(dnnl_memory_desc_t) is ~1.3 KB in 2.x
constexpr size_t kOpDescBytes = 65536;   // sizeof(dnnl_convolution_desc_t) is ~11 KB in 2.x

struct alignas(64) MemoryDesc {
    unsigned char bytes[kMdBytes];
};

// --------------------------------------------------------------------------- thread pool
// oneDNN's threadpool runtime runs its parallel loops on a pool the caller provides; the
// virtual functions must be declared in the order of dnnl::threadpool_interop::threadpool_iface.
struct ThreadpoolIface {
    virtual int get_num_threads() const = 0;
    virtual bool get_in_parallel() const = 0;
    virtual void parallel_for(int n, const std::function<void(int, int)> &fn) = 0;
    virtual uint64_t get_flags() const = 0;
    virtual ~ThreadpoolIface() {}
};

thread_local bool in_pool_work = false;

class ThreadPool final : public ThreadpoolIface {
  public:
    explicit ThreadPool(int num_threads) : num_threads_(num_threads < 1 ? 1 : num_threads) {
        for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
    }
    ~ThreadPool() override {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto &w : workers_) w.join();
    }
    int get_num_threads() const override { return num_threads_; }
    bool get_in_parallel() const override { return in_pool_work; }
    uint64_t get_flags() const override { return 0; }  // synchronous parallel_for

    void parallel_for(int n, const std::function<void(int, int)> &fn) override {
        if (n <= 0) return;
        if (n == 1 || num_threads_ == 1 || in_pool_work) {
            for (int i = 0; i < n; ++i) fn(i, n);
            return;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        job_ = &fn;
        job_size_ = n;
        next_index_.store(0);
        pending_ = n;
        ++generation_;
        lock.unlock();
        wake_.notify_all();
        run_items();
        lock.lock();
        done_.wait(lock, [this] { return pending_ == 0; });
        job_ = nullptr;
    }

  private:
    void run_items() {
        bool was_in_pool = in_pool_work;
        in_pool_work = true;
        int finished = 0;
        for (int i = next_index_.fetch_add(1); i < job_size_; i = next_index_.fetch_add(1)) {
            (*job_)(i, job_size_);
            ++finished;
        }
        in_pool_work = was_in_pool;
        if (finished) {
            std::lock_guard<std::mutex> lock(mutex_);
            pending_ -= finished;
            if (pending_ == 0) done_.notify_all();
        }
    }
    void worker_loop() {
        uint64_t seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && job_); });
            if (stopping_) return;
            seen = generation_;
            lock.unlock();
            run_items();
        }
    }

    const int num_threads_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(int, int)> *job_ = nullptr;
    int job_size_ = 0;
    std::atomic<int> next_index_{0};
    int pending_ = 0;
    uint64_t generation_ = 0;
    bool stopping_ = false;
};

// One thread per core this process may run on (REPVGG_ONEDNN_THREADS overrides).
int pool_size() {
    const char *env = std::getenv("REPVGG_ONEDNN_THREADS");
    if (env && std::atoi(env) > 0) return std::atoi(env);
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 0) return CPU_COUNT(&cpus);
    unsigned hw = std::thread::hardware_concurrency();
    return hw ? static_cast<int>(hw) : 1;
}

// ------------------------------------------------------------------ cached convolution plans
struct Runtime {
    dnnl_engine_t engine = nullptr;
    dnnl_stream_t stream = nullptr;
    std::unique_ptr<ThreadPool> pool;
    bool ok = false;
};

Runtime &runtime() {
    static Runtime rt = [] {
        Runtime r;
        r.pool.reset(new ThreadPool(pool_size()));
        r.ok = dnnl_engine_create(&r.engine, kCpuEngine, 0) == 0 &&
               dnnl_threadpool_interop_stream_create(&r.stream, r.engine, r.pool.get()) == 0;
        return r;
    }();
    return rt;
}

// One reorder (or none, when both layouts are the same) plus the buffer it writes.
struct Reorder {
    dnnl_primitive_t prim = nullptr;
    dnnl_memory_t from = nullptr, to = nullptr;
    std::vector<float> buffer;
    bool needed = false;
};

struct Plan {
    dnnl_primitive_t conv = nullptr;
    dnnl_memory_t src = nullptr, weights = nullptr, bias = nullptr, dst = nullptr;
    Reorder src_in, weights_in, dst_out;
    std::mutex mutex;  // one set of buffers per plan: serialize its users
    bool ok = false;
};

struct ConvShape {
    int64_t x[4], w[4], y[4];  // logical NCHW / OIHW dims
    int64_t stride, pad, groups;
    bool relu, x_nhwc, y_nhwc;
};

using PlanKey = std::vector<int64_t>;

PlanKey plan_key(const ConvShape &c) {
    PlanKey key(c.x, c.x + 4);
    key.insert(key.end(), c.w, c.w + 4);
    key.insert(key.end(), {c.stride, c.pad, c.groups, c.relu, c.x_nhwc, c.y_nhwc});
    return key;
}

// (N, C, H, W) activations stored as NCHW or as NHWC.
void activation_md(MemoryDesc *md, const int64_t *dims, bool nhwc) {
    const int64_t n = dims[0], c = dims[1], h = dims[2], w = dims[3];
    dnnl_dims_t d = {n, c, h, w};
    dnnl_dims_t nchw = {c * h * w, h * w, w, 1}, channels_last = {h * w * c, 1, w * c, c};
    dnnl_memory_desc_init_by_strides(md, 4, d, kF32, nhwc ? channels_last : nchw);
}

void plain_md(MemoryDesc *md, int ndims, const int64_t *dims) {
    dnnl_dims_t d = {0}, strides = {0};
    int64_t stride = 1;
    for (int i = ndims - 1; i >= 0; --i) {
        d[i] = dims[i];
        strides[i] = stride;
        stride *= dims[i];
    }
    dnnl_memory_desc_init_by_strides(md, ndims, d, kF32, strides);
}

// False (after saying which step failed and why) unless `status` is dnnl_success.
bool check(dnnl_status_t status, const char *step) {
    if (status == 0) return true;
    std::fprintf(stderr, "onednn_conv: %s failed (oneDNN status %d)\n", step, status);
    return false;
}

// Prepares `r` to move data between the plain layout `user` and the layout `chosen` picked by
// the convolution; `to_chosen` gives the direction.
bool make_reorder(Reorder *r, const MemoryDesc &user, const void *chosen, bool to_chosen) {
    Runtime &rt = runtime();
    r->needed = !dnnl_memory_desc_equal(&user, chosen);
    if (!r->needed) return true;
    r->buffer.resize(dnnl_memory_desc_get_size(chosen) / sizeof(float) + 16);
    const void *src_md = to_chosen ? static_cast<const void *>(&user) : chosen;
    const void *dst_md = to_chosen ? chosen : static_cast<const void *>(&user);
    dnnl_primitive_desc_t pd = nullptr;
    void *chosen_handle = r->buffer.data();
    return check(dnnl_reorder_primitive_desc_create(&pd, src_md, rt.engine, dst_md, rt.engine, nullptr),
                 "creating a reorder") &&
           check(dnnl_primitive_create(&r->prim, pd), "creating a reorder primitive") &&
           check(dnnl_memory_create(&r->from, src_md, rt.engine, to_chosen ? nullptr : chosen_handle),
                 "creating reorder memory") &&
           check(dnnl_memory_create(&r->to, dst_md, rt.engine, to_chosen ? chosen_handle : nullptr),
                 "creating reorder memory");
}

bool run_reorder(Reorder &r, void *user_handle, bool to_chosen) {
    Runtime &rt = runtime();
    if (to_chosen)
        dnnl_memory_set_data_handle(r.from, user_handle);
    else
        dnnl_memory_set_data_handle(r.to, user_handle);
    dnnl_exec_arg_t args[2] = {{kArgSrc, r.from}, {kArgDst, r.to}};
    return dnnl_primitive_execute(r.prim, rt.stream, 2, args) == 0;
}

bool build_plan(Plan *p, const ConvShape &c) {
    Runtime &rt = runtime();
    if (!rt.ok) {
        std::fprintf(stderr, "onednn_conv: could not create a oneDNN CPU engine and stream\n");
        return false;
    }
    const int64_t *x = c.x, *w = c.w, *y = c.y;
    const int64_t stride = c.stride, pad = c.pad, groups = c.groups;
    MemoryDesc x_md, w_md, b_md, y_md, any_x, any_w, any_y;
    activation_md(&x_md, x, c.x_nhwc);
    activation_md(&y_md, y, c.y_nhwc);
    int64_t bias_dims[1] = {w[0]};
    plain_md(&b_md, 1, bias_dims);
    dnnl_dims_t xd = {x[0], x[1], x[2], x[3]}, yd = {y[0], y[1], y[2], y[3]}, wd = {0};
    int w_ndims = 4;
    if (groups > 1) {  // oneDNN wants grouped weights as (G, O/G, I/G, KH, KW)
        int64_t gw[5] = {groups, w[0] / groups, w[1], w[2], w[3]};
        plain_md(&w_md, 5, gw);
        for (int i = 0; i < 5; ++i) wd[i] = gw[i];
        w_ndims = 5;
    } else {
        plain_md(&w_md, 4, w);
        for (int i = 0; i < 4; ++i) wd[i] = w[i];
    }
    dnnl_memory_desc_init_by_tag(&any_x, 4, xd, kF32, kFormatAny);
    dnnl_memory_desc_init_by_tag(&any_y, 4, yd, kF32, kFormatAny);
    dnnl_memory_desc_init_by_tag(&any_w, w_ndims, wd, kF32, kFormatAny);

    dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
    std::unique_ptr<unsigned char[]> op_desc(new unsigned char[kOpDescBytes]());
    if (!check(dnnl_convolution_forward_desc_init(op_desc.get(), kForwardInference, kConvolutionDirect,
                                                  &any_x, &any_w, &b_md, &any_y, strides, padding,
                                                  padding),
               "describing the convolution")) {
        std::fprintf(stderr, "onednn_conv: x %ldx%ldx%ldx%ld, weights %ldx%ldx%ldx%ld, y %ldx%ldx%ldx%ld, "
                     "stride %ld, padding %ld, groups %ld (logical NCHW / OIHW)\n", x[0], x[1], x[2], x[3],
                     w[0], w[1], w[2], w[3], y[0], y[1], y[2], y[3], stride, pad, groups);
        return false;
    }
    dnnl_primitive_attr_t attr = nullptr;
    if (c.relu) {
        dnnl_post_ops_t post_ops = nullptr;
        if (!check(dnnl_primitive_attr_create(&attr), "creating attributes") ||
            !check(dnnl_post_ops_create(&post_ops), "creating post-ops") ||
            !check(dnnl_post_ops_append_eltwise(post_ops, 1.f, kEltwiseRelu, 0.f, 0.f), "adding ReLU") ||
            !check(dnnl_primitive_attr_set_post_ops(attr, post_ops), "setting post-ops"))
            return false;
    }
    dnnl_primitive_desc_t pd = nullptr;
    if (!check(dnnl_primitive_desc_create(&pd, op_desc.get(), attr, rt.engine, nullptr),
               "finding a convolution implementation"))
        return false;
    if (std::getenv("REPVGG_ONEDNN_VERBOSE")) {
        const char *impl = nullptr;
        dnnl_primitive_desc_query(pd, kQueryImplInfoStr, 0, &impl);
        std::fprintf(stderr, "onednn_conv: %ldx%ldx%ldx%ld -> %ld, k%ld s%ld g%ld: %s\n", x[0],
                     x[1], x[2], x[3], y[1], w[2], stride, groups, impl ? impl : "?");
    }
    const void *src_md = dnnl_primitive_desc_query_md(pd, kQuerySrcMd, 0);
    const void *wei_md = dnnl_primitive_desc_query_md(pd, kQueryWeightsMd, 0);
    const void *dst_md = dnnl_primitive_desc_query_md(pd, kQueryDstMd, 0);
    if (!make_reorder(&p->src_in, x_md, src_md, true) ||
        !make_reorder(&p->weights_in, w_md, wei_md, true) ||
        !make_reorder(&p->dst_out, y_md, dst_md, false))
        return false;
    auto buffer = [](Reorder &r) { return r.needed ? static_cast<void *>(r.buffer.data()) : nullptr; };
    return check(dnnl_primitive_create(&p->conv, pd), "creating the convolution") &&
           check(dnnl_memory_create(&p->src, src_md, rt.engine, buffer(p->src_in)), "creating memory") &&
           check(dnnl_memory_create(&p->weights, wei_md, rt.engine, buffer(p->weights_in)), "creating memory") &&
           check(dnnl_memory_create(&p->bias, &b_md, rt.engine, nullptr), "creating memory") &&
           check(dnnl_memory_create(&p->dst, dst_md, rt.engine, buffer(p->dst_out)), "creating memory");
}

Plan *find_plan(const ConvShape &c) {
    const PlanKey key = plan_key(c);
    static std::mutex cache_mutex;
    static std::map<PlanKey, std::unique_ptr<Plan>> cache;
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second->ok ? it->second.get() : nullptr;
    std::unique_ptr<Plan> plan(new Plan);
    plan->ok = build_plan(plan.get(), c);
    Plan *raw = plan.get();
    cache[key] = std::move(plan);
    return raw->ok ? raw : nullptr;
}

// Weights in the convolution's layout, per (weights_id, plan): built on first use.
std::mutex packed_mutex;
std::map<std::pair<int64_t, Plan *>, std::vector<float>> packed_weights;

const void *weights_for(Plan *p, int64_t weights_id, void *w_data) {
    if (!p->weights_in.needed) return w_data;
    std::lock_guard<std::mutex> lock(packed_mutex);
    auto key = std::make_pair(weights_id, p);
    auto it = packed_weights.find(key);
    if (it != packed_weights.end()) return it->second.data();
    if (!run_reorder(p->weights_in, w_data, true) || dnnl_stream_wait(runtime().stream)) return nullptr;
    return (packed_weights[key] = p->weights_in.buffer).data();
}
}  // namespace

extern "C" void RepVGGOneDNNRelease(int64_t weights_id) {
    std::lock_guard<std::mutex> lock(packed_mutex);
    for (auto it = packed_weights.begin(); it != packed_weights.end();)
        it = it->first.first == weights_id ? packed_weights.erase(it) : std::next(it);
}

extern "C" int RepVGGOneDNNConv(int nparam, void **params, int *ndims, int64_t **shapes,
                                const char **dtypes, void *stream, void *extra) {
    (void)stream;
    (void)extra;
    if (nparam != 5 || ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 1 || ndims[3] != 1 ||
        shapes[3][0] != 7 || ndims[4] != 4)
        return 1;
    for (int i : {0, 1, 2, 4})
        if (std::strcmp(dtypes[i], "float32") != 0) return 2;
    const int64_t *settings = static_cast<const int64_t *>(params[3]);
    ConvShape c;
    c.stride = settings[0];
    c.pad = settings[1];
    c.groups = settings[2];
    c.relu = settings[3] != 0;
    c.x_nhwc = settings[4] != 0;
    c.y_nhwc = settings[5] != 0;
    const int64_t weights_id = settings[6];
    const int64_t *x = shapes[0], *y = shapes[4];
    const int64_t xl[4] = {x[0], c.x_nhwc ? x[3] : x[1], c.x_nhwc ? x[1] : x[2], c.x_nhwc ? x[2] : x[3]};
    const int64_t yl[4] = {y[0], c.y_nhwc ? y[3] : y[1], c.y_nhwc ? y[1] : y[2], c.y_nhwc ? y[2] : y[3]};
    std::copy(xl, xl + 4, c.x);
    std::copy(yl, yl + 4, c.y);
    std::copy(shapes[1], shapes[1] + 4, c.w);
    Plan *p = find_plan(c);
    if (!p) return 3;
    std::lock_guard<std::mutex> lock(p->mutex);
    Runtime &rt = runtime();
    void *x_data = params[0], *b_data = params[2], *y_data = params[4];
    const void *w_packed = weights_for(p, weights_id, params[1]);
    if (!w_packed) return 4;
    dnnl_memory_set_data_handle(p->weights, const_cast<void *>(w_packed));
    if (p->src_in.needed) {
        if (!run_reorder(p->src_in, x_data, true)) return 4;
    } else {
        dnnl_memory_set_data_handle(p->src, x_data);
    }
    dnnl_memory_set_data_handle(p->bias, b_data);
    if (!p->dst_out.needed) dnnl_memory_set_data_handle(p->dst, y_data);
    dnnl_exec_arg_t args[4] = {{kArgSrc, p->src}, {kArgWeights, p->weights},
                               {kArgBias, p->bias}, {kArgDst, p->dst}};
    if (dnnl_primitive_execute(p->conv, rt.stream, 4, args)) return 5;
    if (p->dst_out.needed && !run_reorder(p->dst_out, y_data, false)) return 4;
    return dnnl_stream_wait(rt.stream) == 0 ? 0 : 6;
}
