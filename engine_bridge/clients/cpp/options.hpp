// options.hpp: worldsim_client's command line: the Options of its three modes (play, --realtime,
// --record), the --help text, and parsing, which refuses a mode's options given to another mode.
// A header of its own because Connection reads --addr, --timeout-ms and --retries from Options.
#pragma once

#include "wire.hpp"  // fail, kUsage, join

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace worldsim_bridge {

struct Options {
    std::string addr = "tcp://127.0.0.1:5555";
    long ticks = 100;         // play: ticks to run; realtime: frames to receive; record: a cap on the
    bool ticks_given = false; //   frames sent (only if given)
    std::string out = "frames.rgb";
    int64_t seed = 0;
    bool seed_given = false;  // with --load: a new branch of random draws (LOAD's seed), else none sent
    long timeout_ms = 5000;
    long retries = 0;
    bool realtime = false;    // --realtime: a realtime session instead of lockstep STEPs
    std::string record;       // non-empty: record mode, frames read from this file
    long height = 64, width = 64;
    double tick_rate = 17.5;
    std::string load;         // play/realtime: LOAD this save (capability "save") instead of OPEN
    std::string save;         // play/realtime: SAVE the session under this name after the last tick
    bool list_saves = false;  // --list-saves: print the server's saves (SAVES), nothing else
    std::string delete_save;  // --delete-save NAME: remove a save (DELETE_SAVE), nothing else
};

inline void usage(std::ostream& os) {
    os << "usage: worldsim_client [--addr tcp://127.0.0.1:5555] [--ticks 100] [--out frames.rgb]\n"
          "                       [--seed N] [--timeout-ms 5000] [--retries 0] [--load NAME] [--save NAME]\n"
          "       worldsim_client --realtime [--addr tcp://127.0.0.1:5555] [--ticks 100] [--out frames.rgb]\n"
          "                       [--seed N] [--timeout-ms 5000] [--load NAME] [--save NAME]\n"
          "       worldsim_client --list-saves | --delete-save NAME [--addr tcp://127.0.0.1:5555] [--timeout-ms 5000]\n"
          "                       [--retries 0]\n"
          "       worldsim_client --record frames.rgb [--size 64x64] [--tick-rate 17.5] [--ticks N]\n"
          "                       [--addr tcp://127.0.0.1:5555] [--timeout-ms 5000] [--retries 0]\n"
          "play mode runs --ticks lockstep ticks of a served world and writes the frames to --out;\n"
          "--realtime opens a realtime session instead: the server ticks at the world's rate and pushes\n"
          "the frames (flow control by credit), the client sends an action per frame, until --ticks\n"
          "frames arrived (no reconnects: a stream silent for --timeout-ms ends it, exit 2);\n"
          "--load NAME continues a save kept on the server (`worldsim serve --save-dir DIR`) instead of\n"
          "opening a new session (with --seed: new random draws from there on), --save NAME keeps the\n"
          "session on the server's disk after the last tick; --list-saves prints the server's saves\n"
          "and --delete-save NAME removes one (a game's save menu);\n"
          "--record sends the raw RGB frames of a file (HxW by --size, e.g. play mode's --out) to a\n"
          "`worldsim record bridge` server, with the scripted actions, as a recording\n";
}

inline long parse_long(const std::string& flag, const std::string& s, long lo) {
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0 || v < lo)
        fail(kUsage, flag + ": expected an integer >= " + std::to_string(lo) + ", got '" + s + "'");
    return v;
}

// "HxW", e.g. 64x64. Bounded so that H*W*3 cannot overflow and one frame stays a sane message.
inline void parse_size(const std::string& s, long& h, long& w) {
    const size_t x = s.find('x');
    if (x == std::string::npos) fail(kUsage, "--size: expected HxW (e.g. 64x64), got '" + s + "'");
    h = parse_long("--size (height)", s.substr(0, x), 1);
    w = parse_long("--size (width)", s.substr(x + 1), 1);
    if (h > 16384 || w > 16384) fail(kUsage, "--size: at most 16384x16384, got '" + s + "'");
}

inline double parse_rate(const std::string& flag, const std::string& s) {
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno != 0 || !std::isfinite(v) || v <= 0)
        fail(kUsage, flag + ": expected a number > 0, got '" + s + "'");
    return v;
}

// A save's name as the server takes it (PROTOCOL.md, SAVE): a file name, never a path. Checked
// here so that a typo fails before a session runs, not after its last tick.
inline std::string save_name(const std::string& flag, const std::string& s) {
    auto ok_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'; };
    if (s.empty() || s.size() > 64 || !std::isalnum(static_cast<unsigned char>(s[0])) ||
        !std::all_of(s.begin(), s.end(), ok_char))
        fail(kUsage, flag + ": a save's name is 1-64 letters, digits, '_', '-' or '.', starting with a letter or "
                            "digit (not a path), got '" + s + "'");
    return s;
}

inline Options parse_args(int argc, char** argv) {
    Options o;
    std::vector<std::string> play_only, record_only;  // given options, to reject mixing the modes
    bool retries_given = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        // flags (no value)
        if (a == "-h" || a == "--help") { usage(std::cout); std::exit(kOk); }
        if (a == "--realtime") { o.realtime = true; continue; }
        if (a == "--list-saves") { o.list_saves = true; continue; }
        // options with a value
        if (i + 1 >= argc) { usage(std::cerr); fail(kUsage, "unknown option or missing value: " + a); }
        std::string v = argv[++i];
        if (a == "--addr") o.addr = v;
        else if (a == "--ticks") { o.ticks = parse_long(a, v, 1); o.ticks_given = true; }
        else if (a == "--out") { o.out = v; play_only.push_back(a); }
        else if (a == "--seed") { o.seed = parse_long(a, v, 0); o.seed_given = true; play_only.push_back(a); }
        else if (a == "--load") { o.load = save_name(a, v); play_only.push_back(a); }
        else if (a == "--save") { o.save = save_name(a, v); play_only.push_back(a); }
        else if (a == "--delete-save") o.delete_save = save_name(a, v);
        else if (a == "--timeout-ms") o.timeout_ms = parse_long(a, v, 1);
        else if (a == "--retries") { o.retries = parse_long(a, v, 0); retries_given = true; }
        else if (a == "--record") {
            if (v.empty()) fail(kUsage, "--record: expected a file name");
            o.record = v;
        }
        else if (a == "--size") { parse_size(v, o.height, o.width); record_only.push_back(a); }
        else if (a == "--tick-rate") { o.tick_rate = parse_rate(a, v); record_only.push_back(a); }
        else { usage(std::cerr); fail(kUsage, "unknown option: " + a); }
    }
    // A flag of the other mode is almost surely a mistake (e.g. --out meant to name the input).
    if (o.list_saves || !o.delete_save.empty()) {
        if (o.list_saves && !o.delete_save.empty()) fail(kUsage, "--list-saves and --delete-save: one at a time");
        std::vector<std::string> other = play_only;
        if (o.realtime) other.push_back("--realtime");
        if (!o.record.empty()) other.push_back("--record");
        if (o.ticks_given) other.push_back("--ticks");
        other.insert(other.end(), record_only.begin(), record_only.end());
        if (!other.empty())
            fail(kUsage, std::string(o.list_saves ? "--list-saves" : "--delete-save") +
                             " talks to the server's saves only; it takes no " + join(other));
        return o;
    }
    if (o.realtime) {
        if (!o.record.empty())
            fail(kUsage, "--realtime and --record are different modes: realtime plays a served world, --record "
                         "sends a frame file to a `worldsim record bridge` server");
        if (!record_only.empty()) fail(kUsage, "record mode options cannot be used with --realtime: " + join(record_only));
        if (retries_given)
            fail(kUsage, "--retries cannot be used with --realtime: realtime mode does not reconnect (a frame "
                         "stream silent for --timeout-ms ends the run)");
    }
    if (!o.record.empty() && !play_only.empty())
        fail(kUsage, "play mode options cannot be used with --record: " + join(play_only));
    if (o.record.empty() && !record_only.empty())
        fail(kUsage, "record mode options need --record FILE: " + join(record_only));
    return o;
}

}  // namespace worldsim_bridge
