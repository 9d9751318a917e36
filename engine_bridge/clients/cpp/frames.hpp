// frames.hpp: the raw RGB frames the modes move: the served world's frame size as WELCOME
// announces it, each OBS frame checked and appended to --out (play and realtime modes), and the
// --record file read back frame by frame (record mode).
#pragma once

#include "wire.hpp"

#include <msgpack.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

namespace worldsim_bridge {

// What WELCOME says about the served world (play and realtime modes), printed as it is read.
struct WorldInfo {
    int64_t H = 0, W = 0;
    double tick_rate = 0;
};

inline WorldInfo read_world(const Reply& welcome) {
    const msgpack::object& wb = welcome.body;
    const msgpack::object& world = get_map(wb, "world", "WELCOME.body");
    auto name = get<std::string>(world, "name", "WELCOME.body.world");
    auto res = get<std::vector<int64_t>>(world, "resolution", "WELCOME.body.world");
    WorldInfo info;
    info.tick_rate = get<double>(world, "tick_rate", "WELCOME.body.world");
    if (res.size() != 2 || res[0] <= 0 || res[1] <= 0) fail(kProtocol, "WELCOME.body.world.resolution must be [H, W]");
    const msgpack::object& schema = get_map(wb, "schema", "WELCOME.body");
    auto buttons = get<std::vector<std::string>>(schema, "buttons", "WELCOME.body.schema");
    info.H = res[0];
    info.W = res[1];
    std::cout << "world: " << name << ", " << info.H << "x" << info.W << " (HxW), " << info.tick_rate << " ticks/s\n"
              << "buttons: " << join(buttons) << std::endl;
    return info;
}

// Checks an OBS body's frame ([H, W, 3] uint8) and audio (nil or int16 [S, C]), appends the
// frame to `out` and returns its byte count; adds the audio's sample frames to `audio_samples`.
inline size_t take_obs(const msgpack::object& body, const std::string& where, const WorldInfo& world,
                       std::ofstream& out, const std::string& out_path, uint64_t& audio_samples) {
    const msgpack::object* frame_o = find(body, "frame");
    if (!frame_o) fail(kProtocol, where + ".frame is missing");
    ArrayView frame = check_array(*frame_o, "uint8", 1, where + ".frame");
    if (frame.shape != std::vector<int64_t>{world.H, world.W, 3})
        fail(kProtocol, where + ".frame.shape is not [" + std::to_string(world.H) + ", " + std::to_string(world.W) + ", 3]");
    out.write(frame.data, static_cast<std::streamsize>(frame.size));
    if (!out) fail(kUsage, "write to " + out_path + " failed");

    const msgpack::object* audio_o = find(body, "audio");
    if (audio_o && audio_o->type != msgpack::type::NIL) {  // nil = no audio for this world
        ArrayView audio = check_array(*audio_o, "int16", 2, where + ".audio");
        if (audio.shape.size() != 2) fail(kProtocol, where + ".audio.shape must be [S, C]");
        if (get<double>(*audio_o, "rate", where + ".audio") <= 0) fail(kProtocol, where + ".audio.rate must be > 0");
        audio_samples += static_cast<uint64_t>(audio.shape[0]);  // sample frames (per channel)
    }
    return frame.size;
}

// The --record file: H*W*3 bytes per frame, concatenated. Its size is checked before connecting,
// so a wrong file or --size fails at once instead of leaving a half-written recording.
class FrameFile {
public:
    FrameFile(const std::string& path, long H, long W) : path_(path), frame_(static_cast<size_t>(H * W * 3)) {
        std::error_code ec;
        if (!std::filesystem::exists(path, ec)) fail(kUsage, "--record: no such file: " + path);
        if (!std::filesystem::is_regular_file(path, ec)) fail(kUsage, "--record: " + path + " is not a regular file");
        const uintmax_t size = std::filesystem::file_size(path, ec);
        if (ec) fail(kUsage, "--record: cannot read the size of " + path + ": " + ec.message());
        const std::string dims = std::to_string(H) + "x" + std::to_string(W) + "x3";
        if (size == 0) fail(kUsage, "--record: " + path + " is empty (expected raw RGB frames, " + dims + " bytes each)");
        if (size % frame_.size() != 0)
            fail(kUsage, "--record: " + path + " has " + std::to_string(size) + " bytes, not a whole number of " + dims +
                             " frames (" + std::to_string(frame_.size()) + " bytes each): is --size right?");
        frames_ = static_cast<long>(size / frame_.size());
        in_.open(path, std::ios::binary);
        if (!in_) fail(kUsage, "--record: cannot open " + path);
    }

    long frames() const { return frames_; }

    // The next frame's bytes (valid until the next call).
    const std::vector<char>& next() {
        in_.read(frame_.data(), static_cast<std::streamsize>(frame_.size()));
        if (!in_) fail(kUsage, "--record: reading " + path_ + " failed");
        return frame_;
    }

private:
    std::string path_;
    std::vector<char> frame_;
    std::ifstream in_;
    long frames_ = 0;
};

}  // namespace worldsim_bridge
