/* convgen's CUDA emulator: runs a .cu file's kernels on the host CPU.
 *
 * Compile the .cu as C++17 with this header forced in first (g++ -x c++
 * -include emulator.h -DCONVGEN_CUDA_EMULATION); it supplies what the kernel
 * code uses of CUDA: dim3, threadIdx, blockIdx, blockDim, gridDim,
 * __global__/__device__/__shared__, __launch_bounds__, __syncthreads(),
 * cudaError_t, cudaGetLastError and cudaDeviceSynchronize, and CONVGEN_LAUNCH, which the emitted
 * launchers use in place of kernel<<<grid, block, 0, stream>>>(...).
 *
 * A launch runs the grid's blocks one after another. Within a block, each
 * CUDA thread is a fiber (ucontext) with its own stack; they run in order
 * of their index, each until it reaches __syncthreads() or returns, and no
 * thread passes a barrier before every thread of its block has reached it.
 * So a barrier has its real meaning, and a kernel that needs one and lacks
 * it reads what another thread has not written yet (thread 0 runs to its
 * end before thread 1 starts): the race shows as a wrong result, every run.
 * __shared__ variables are static: one copy, reused by each block in turn.
 * A block whose threads do not all reach the same barriers is an error:
 * cudaGetLastError() returns cudaErrorLaunchFailure and
 * convgen_emulator::failure says which block.
 */
#ifndef CONVGEN_CUDA_EMULATOR_H
#define CONVGEN_CUDA_EMULATOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

typedef int cudaError_t;
typedef void *cudaStream_t;
static const cudaError_t cudaSuccess = 0;
static const cudaError_t cudaErrorLaunchFailure = 719;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

namespace convgen_emulator {

// static, not inline: an inline variable is one symbol for the whole process (GNU unique), so a
// kernel's failure or indices would be seen by every other emulated kernel loaded beside it
static dim3 thread_index, block_index, block_dim, grid_dim;
static char failure[256];

struct Fiber {
    ucontext_t context;
    char *stack;
    dim3 index;
    bool done;
};

static ucontext_t scheduler;
static Fiber *current = nullptr;
static void *body = nullptr;             // the launch's kernel call (a lambda), and how to run it
static void (*run_body)(void *) = nullptr;
const size_t STACK_BYTES = 64 * 1024;

static void start_fiber() {
    run_body(body);
    current->done = true;   // returning resumes the scheduler (uc_link)
}

static void barrier() {
    if (current != nullptr)
        swapcontext(&current->context, &scheduler);
}

static void fail(const char *what) {
    if (!failure[0])
        snprintf(failure, sizeof failure, "%s (block %u,%u,%u)", what, block_index.x, block_index.y, block_index.z);
}

/* Run one block: every thread from its start to its end, meeting at each barrier. */
static void run_block(Fiber *fibers, size_t count) {
    for (size_t k = 0; k < count; ++k) {
        Fiber &fiber = fibers[k];
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = fiber.stack;
        fiber.context.uc_stack.ss_size = STACK_BYTES;
        fiber.context.uc_link = &scheduler;
        fiber.done = false;
        makecontext(&fiber.context, start_fiber, 0);
    }
    for (;;) {
        size_t finished = 0;
        for (size_t k = 0; k < count; ++k) {   // each runs to its next barrier, or to its end
            current = &fibers[k];
            thread_index = fibers[k].index;
            swapcontext(&scheduler, &fibers[k].context);
            finished += fibers[k].done;
        }
        current = nullptr;
        if (finished == count)
            return;
        if (finished != 0) {
            fail("some threads of a block returned while others wait at __syncthreads()");
            return;
        }
    }
}

template <class Kernel>
static void launch(dim3 grid, dim3 block, Kernel kernel) {
    const size_t count = size_t(block.x) * block.y * block.z;
    Fiber *fibers = static_cast<Fiber *>(calloc(count, sizeof(Fiber)));
    char *stacks = static_cast<char *>(malloc(count * STACK_BYTES));
    size_t k = 0;
    for (unsigned z = 0; z < block.z; ++z)
        for (unsigned y = 0; y < block.y; ++y)
            for (unsigned x = 0; x < block.x; ++x, ++k) {
                fibers[k].index = dim3(x, y, z);
                fibers[k].stack = stacks + k * STACK_BYTES;
            }
    grid_dim = grid;
    block_dim = block;
    body = &kernel;
    run_body = [](void *call) { (*static_cast<Kernel *>(call))(); };
    for (unsigned z = 0; z < grid.z && !failure[0]; ++z)
        for (unsigned y = 0; y < grid.y && !failure[0]; ++y)
            for (unsigned x = 0; x < grid.x && !failure[0]; ++x) {
                block_index = dim3(x, y, z);
                run_block(fibers, count);
            }
    body = nullptr;
    free(stacks);
    free(fibers);
}

}  // namespace convgen_emulator

#define threadIdx (convgen_emulator::thread_index)
#define blockIdx (convgen_emulator::block_index)
#define blockDim (convgen_emulator::block_dim)
#define gridDim (convgen_emulator::grid_dim)

static inline void __syncthreads() { convgen_emulator::barrier(); }
static inline cudaError_t cudaGetLastError() { return convgen_emulator::failure[0] ? cudaErrorLaunchFailure : cudaSuccess; }
static inline cudaError_t cudaDeviceSynchronize() { return cudaGetLastError(); }   // a launch returns when it is done

#define CONVGEN_LAUNCH(kernel, grid, block, stream, ...) \
    convgen_emulator::launch((grid), (block), [&]() { kernel(__VA_ARGS__); })

#endif
