// Prints the tensors stable-diffusion.cpp's SDXS-512 classes declare (CLIP ViT-L/14 text encoder, the tiny
// UNet without a middle block, and TAESD, the tiny autoencoder SDXS decodes with; sd-server loads its encoder
// too), one "name type ne0 ne1 ne2 ne3" line each: the list
// tests/fixtures/tiny_sd.py writes seeded weights for. Build against an sd-server build tree:
//   c++ -std=c++17 -I SRC -I SRC/src -I SRC/ggml/include -I SRC/thirdparty scripts/dump_sd_tensors.cpp \
//       BUILD/libstable-diffusion.a BUILD/ggml/src/libggml*.a -lpthread -fopenmp -o /tmp/dump_sd_tensors
#include <cstdio>
#include <map>
#include <string>

#include "vae.hpp"
#include "tae.hpp"
#include "conditioner.hpp"
#include "diffusion_model.hpp"

int main() {
    ggml_backend_t cpu = ggml_backend_cpu_init();
    SDVersion version  = VERSION_SDXS_512_DS;
    String2TensorStorage none;
    std::map<std::string, ggml_tensor*> tensors;
    FrozenCLIPEmbedderWithCustomWords clip(cpu, false, none, {}, version);
    clip.alloc_params_buffer();
    clip.get_param_tensors(tensors);
    UNetModel unet(cpu, false, none, version);
    unet.alloc_params_buffer();
    unet.get_param_tensors(tensors);
    TinyImageAutoEncoder tae(cpu, false, none, "decoder.layers", false, version);  // SDXS decodes with TAESD
    tae.alloc_params_buffer();
    tae.get_param_tensors(tensors, "tae");
    for (auto& [name, t] : tensors) {
        std::printf("%s %s %lld %lld %lld %lld\n", name.c_str(), ggml_type_name(t->type), (long long)t->ne[0],
                    (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
    }
    return 0;
}
