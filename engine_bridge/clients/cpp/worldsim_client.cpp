// worldsim_client: reference C++17 client for the worldsim bridge protocol 1.1
// (engine_bridge/PROTOCOL.md), written as a starting point for an Unreal-side client.
//
//   play:   worldsim_client --addr tcp://127.0.0.1:5555 --ticks 100 --out frames.rgb [--seed N]
//   record: worldsim_client --addr tcp://127.0.0.1:5560 --record frames.rgb [--size 64x64] [--tick-rate 17.5]
//                           [--ticks N]
//   both:   [--timeout-ms 5000] [--retries 0]
//
// Play mode (a server with a world, capability "lockstep"): HELLO -> WELCOME, OPEN lockstep ->
// OK {sid}, then one STEP -> OBS per tick (raw RGB frames are appended to --out), then CLOSE -> OK.
//
// Record mode (a `worldsim record bridge --out DIR` server, capability "record", protocol 1.1):
// the client plays the engine that records its own gameplay. HELLO -> WELCOME, REC_OPEN {DOOM
// schema} -> OK {rec}, then one REC_STEP {frame, action} -> OK {steps} per frame of --record
// (raw RGB, H*W*3 bytes per frame as --size says, concatenated: what play mode's --out writes;
// at most --ticks frames), the action being play mode's scripted input for that tick, then
// REC_CLOSE -> OK {episodes}. The server writes the episodes.
//
// Every message is one ZeroMQ frame holding one MessagePack map {v, type, rid, sid, body}.
// Every receive waits at most --timeout-ms (Lazy Pirate): on timeout the client reconnects,
// resumes with its token and resends the request up to --retries times (default 0), then
// reports the timeout and exits.
//
// Exit codes: 0 ok, 1 usage or I/O error, 2 timeout, 3 ERROR reply, 4 protocol violation.
#include <msgpack.hpp>
#include <zmq.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Packer = msgpack::packer<msgpack::sbuffer>;
using BodyFn = std::function<void(Packer&)>;  // must pack exactly one map

constexpr int kMajor = 1, kMinor = 1;
constexpr const char* kClientName = "worldsim_client (C++ reference)";
enum Exit { kOk = 0, kUsage = 1, kTimeout = 2, kErrorReply = 3, kProtocol = 4 };

[[noreturn]] void fail(int code, const std::string& msg) {
    std::cerr << "worldsim_client: error: " << msg << std::endl;
    std::exit(code);  // skips destructors on purpose: no zmq_ctx_term wait for pending messages
}

struct Options {
    std::string addr = "tcp://127.0.0.1:5555";
    long ticks = 100;         // play: ticks to run; record: a cap on the frames sent (only if given)
    bool ticks_given = false;
    std::string out = "frames.rgb";
    int64_t seed = 0;
    long timeout_ms = 5000;
    long retries = 0;
    std::string record;       // non-empty: record mode, frames read from this file
    long height = 64, width = 64;
    double tick_rate = 17.5;
};

void usage(std::ostream& os) {
    os << "usage: worldsim_client [--addr tcp://127.0.0.1:5555] [--ticks 100] [--out frames.rgb]\n"
          "                       [--seed N] [--timeout-ms 5000] [--retries 0]\n"
          "       worldsim_client --record frames.rgb [--size 64x64] [--tick-rate 17.5] [--ticks N]\n"
          "                       [--addr tcp://127.0.0.1:5555] [--timeout-ms 5000] [--retries 0]\n"
          "play mode runs --ticks lockstep ticks of a served world and writes the frames to --out;\n"
          "--record sends the raw RGB frames of a file (HxW by --size, e.g. play mode's --out) to a\n"
          "`worldsim record bridge` server, with the scripted actions, as a recording\n";
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

long parse_long(const std::string& flag, const std::string& s, long lo) {
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0 || v < lo)
        fail(kUsage, flag + ": expected an integer >= " + std::to_string(lo) + ", got '" + s + "'");
    return v;
}

// "HxW", e.g. 64x64. Bounded so that H*W*3 cannot overflow and one frame stays a sane message.
void parse_size(const std::string& s, long& h, long& w) {
    const size_t x = s.find('x');
    if (x == std::string::npos) fail(kUsage, "--size: expected HxW (e.g. 64x64), got '" + s + "'");
    h = parse_long("--size (height)", s.substr(0, x), 1);
    w = parse_long("--size (width)", s.substr(x + 1), 1);
    if (h > 16384 || w > 16384) fail(kUsage, "--size: at most 16384x16384, got '" + s + "'");
}

double parse_rate(const std::string& flag, const std::string& s) {
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno != 0 || !std::isfinite(v) || v <= 0)
        fail(kUsage, flag + ": expected a number > 0, got '" + s + "'");
    return v;
}

Options parse_args(int argc, char** argv) {
    Options o;
    std::vector<std::string> play_only, record_only;  // given options, to reject mixing the modes
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") { usage(std::cout); std::exit(kOk); }
        if (i + 1 >= argc) { usage(std::cerr); fail(kUsage, "unknown option or missing value: " + a); }
        std::string v = argv[++i];
        if (a == "--addr") o.addr = v;
        else if (a == "--ticks") { o.ticks = parse_long(a, v, 1); o.ticks_given = true; }
        else if (a == "--out") { o.out = v; play_only.push_back(a); }
        else if (a == "--seed") { o.seed = parse_long(a, v, 0); play_only.push_back(a); }
        else if (a == "--timeout-ms") o.timeout_ms = parse_long(a, v, 1);
        else if (a == "--retries") o.retries = parse_long(a, v, 0);
        else if (a == "--record") {
            if (v.empty()) fail(kUsage, "--record: expected a file name");
            o.record = v;
        }
        else if (a == "--size") { parse_size(v, o.height, o.width); record_only.push_back(a); }
        else if (a == "--tick-rate") { o.tick_rate = parse_rate(a, v); record_only.push_back(a); }
        else { usage(std::cerr); fail(kUsage, "unknown option: " + a); }
    }
    // A flag of the other mode is almost surely a mistake (e.g. --out meant to name the input).
    if (!o.record.empty() && !play_only.empty())
        fail(kUsage, "play mode options cannot be used with --record: " + join(play_only));
    if (o.record.empty() && !record_only.empty())
        fail(kUsage, "record mode options need --record FILE: " + join(record_only));
    return o;
}

// ---- reading MessagePack maps (tolerant reader: unknown keys are ignored) ----

const msgpack::object* find(const msgpack::object& map, const char* key) {
    if (map.type != msgpack::type::MAP) return nullptr;
    const size_t n = std::strlen(key);
    for (uint32_t i = 0; i < map.via.map.size; ++i) {
        const msgpack::object_kv& kv = map.via.map.ptr[i];
        if (kv.key.type == msgpack::type::STR && kv.key.via.str.size == n &&
            std::memcmp(kv.key.via.str.ptr, key, n) == 0)
            return &kv.val;
    }
    return nullptr;
}

// A required field converted to T; `where` names it in error messages ("WELCOME.body.world").
template <class T>
T get(const msgpack::object& map, const char* key, const std::string& where) {
    const msgpack::object* o = find(map, key);
    if (!o) fail(kProtocol, where + "." + key + " is missing");
    try {
        return o->as<T>();
    } catch (const std::exception&) {
        fail(kProtocol, where + "." + key + " has the wrong type");
    }
}

const msgpack::object& get_map(const msgpack::object& map, const char* key, const std::string& where) {
    const msgpack::object* o = find(map, key);
    if (!o || o->type != msgpack::type::MAP) fail(kProtocol, where + "." + key + " must be a map");
    return *o;
}

// An array {dtype, shape, data: bin} checked against the expected dtype and item size.
struct ArrayView {
    std::vector<int64_t> shape;
    const char* data = nullptr;
    size_t size = 0;
};

ArrayView check_array(const msgpack::object& a, const char* dtype, size_t itemsize, const std::string& where) {
    if (a.type != msgpack::type::MAP) fail(kProtocol, where + " must be a map {dtype, shape, data}");
    ArrayView v;
    auto dt = get<std::string>(a, "dtype", where);
    if (dt != dtype) fail(kProtocol, where + ".dtype is '" + dt + "', expected '" + dtype + "'");
    v.shape = get<std::vector<int64_t>>(a, "shape", where);
    const msgpack::object* d = find(a, "data");
    if (!d || d->type != msgpack::type::BIN) fail(kProtocol, where + ".data must be MessagePack bin");
    v.data = d->via.bin.ptr;
    v.size = d->via.bin.size;
    size_t n = itemsize;
    for (int64_t s : v.shape) {
        if (s < 0) fail(kProtocol, where + ".shape has a negative dimension");
        n *= static_cast<size_t>(s);
    }
    if (n != v.size)
        fail(kProtocol, where + ".data has " + std::to_string(v.size) + " bytes, dtype/shape say " + std::to_string(n));
    return v;
}

// ---- one DEALER connection: requests with a bounded wait for the matching reply ----

struct Reply {
    msgpack::object_handle handle;  // owns the memory `body` points into
    std::string type;
    msgpack::object body;           // a map (empty map when the body was absent/nil)
};

class Connection {
public:
    // `capabilities`: what every HELLO asks for, the first and each HELLO {resume} alike (the
    // server grants per HELLO, so a resume asking for less would lose the mode mid-run).
    Connection(zmq::context_t& ctx, const Options& opt, std::vector<std::string> capabilities)
        : ctx_(ctx), opt_(opt), caps_(std::move(capabilities)) { reconnect(); }

    const std::vector<std::string>& capabilities() const { return caps_; }
    void set_token(const std::string& token) { token_ = token; }

    // Sends {v, type, rid, sid, body} and returns the reply carrying the same rid.
    // Lazy Pirate: on timeout (or a retryable ERROR such as CAPACITY), reconnect on a fresh
    // socket, HELLO {resume: token}, and resend the same bytes (same rid: the server answers a
    // repeated STEP without a second tick, a repeated REC_STEP without writing twice), at most
    // --retries times; then give up. Other ERROR replies end the program at once.
    Reply request(const std::string& type, const std::string& sid, const BodyFn& body, const std::string& expected) {
        const int64_t rid = next_rid_++;
        msgpack::sbuffer buf;
        Packer pk(buf);
        pk.pack_map(5);
        pk.pack("v");    pk.pack_array(2); pk.pack(kMajor); pk.pack(kMinor);
        pk.pack("type"); pk.pack(type);
        pk.pack("rid");  pk.pack(rid);
        pk.pack("sid");  if (sid.empty()) pk.pack_nil(); else pk.pack(sid);
        pk.pack("body"); body(pk);
        const std::string what = type + " (rid " + std::to_string(rid) + ")";
        bool ready = true;  // connected, and resumed if we had a session
        for (long attempt = 0;; ++attempt) {
            Status st = kNoReply;
            if (ready) {
                if (!sock_->send(zmq::buffer(buf.data(), buf.size()), zmq::send_flags::dontwait))
                    fail(kTimeout, "could not queue " + type + " (send queue full: server unreachable?)");
                Reply r;
                if ((st = wait(rid, type, expected, r)) == kReply) return r;
            }
            const std::string msg = st == kRetryableError ? what + " failed: " + last_error_
                : "no reply to " + (ready ? what : "HELLO {resume}") + " within " + std::to_string(opt_.timeout_ms) + " ms";
            if (attempt >= opt_.retries) {
                if (st == kRetryableError) fail(kErrorReply, msg);
                fail(kTimeout, msg + ": is the server running at " + opt_.addr + "?");
            }
            std::cerr << "worldsim_client: warning: " << msg << "; reconnecting (retry " << attempt + 1 << "/"
                      << opt_.retries << ")" << std::endl;
            if (st == kRetryableError)  // e.g. CAPACITY: give the server a moment
                std::this_thread::sleep_for(std::chrono::milliseconds(100 * (attempt + 1)));
            reconnect();
            ready = token_.empty() || resume();
        }
    }

private:
    enum Status { kReply, kNoReply, kRetryableError };

    void reconnect() {
        sock_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
        sock_->set(zmq::sockopt::linger, 0);  // never hang on close/exit with unsent messages
        sock_->connect(opt_.addr);
    }

    // HELLO {resume: token} on the fresh socket; false on timeout.
    bool resume() {
        const int64_t rid = next_rid_++;
        msgpack::sbuffer buf;
        Packer pk(buf);
        pk.pack_map(5);
        pk.pack("v");    pk.pack_array(2); pk.pack(kMajor); pk.pack(kMinor);
        pk.pack("type"); pk.pack("HELLO");
        pk.pack("rid");  pk.pack(rid);
        pk.pack("sid");  pk.pack_nil();
        pk.pack("body"); pk.pack_map(3);
        pk.pack("client"); pk.pack(kClientName);
        pk.pack("capabilities"); pk.pack(caps_);
        pk.pack("resume"); pk.pack(token_);
        Reply w;
        if (!sock_->send(zmq::buffer(buf.data(), buf.size()), zmq::send_flags::dontwait) ||
            wait(rid, "HELLO {resume}", "WELCOME", w) != kReply)
            return false;
        if (!get<bool>(w.body, "resumed", "WELCOME.body"))
            fail(kProtocol, "server did not resume our sessions (token expired?)");
        return true;
    }

    // Waits up to --timeout-ms for the reply to `rid` (replies to older requests are skipped).
    // kNoReply on timeout, kRetryableError for an ERROR {retryable: true} (text in last_error_);
    // any other ERROR reply or an unexpected reply type ends the program.
    Status wait(int64_t rid, const std::string& request, const std::string& expected, Reply& r) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(opt_.timeout_ms);
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            zmq::pollitem_t item{sock_->handle(), 0, ZMQ_POLLIN, 0};
            if (left.count() > 0) zmq::poll(&item, 1, left);
            if (!(item.revents & ZMQ_POLLIN)) return kNoReply;
            zmq::message_t frame;
            if (!sock_->recv(frame, zmq::recv_flags::dontwait)) continue;
            if (frame.more()) fail(kProtocol, "got a multipart message; the protocol uses single frames");

            r.handle = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
            const msgpack::object& msg = r.handle.get();
            if (msg.type != msgpack::type::MAP) fail(kProtocol, "reply is not a MessagePack map");
            r.type = get<std::string>(msg, "type", "reply");
            const msgpack::object* rid_o = find(msg, "rid");
            const bool has_rid = rid_o && rid_o->type == msgpack::type::POSITIVE_INTEGER;
            const int64_t got_rid = has_rid ? rid_o->as<int64_t>() : -1;
            const msgpack::object* body = find(msg, "body");
            if (body && body->type == msgpack::type::MAP) {
                r.body = *body;
            } else {  // absent or nil body = empty map
                r.body.type = msgpack::type::MAP;
                r.body.via.map.size = 0;
                r.body.via.map.ptr = nullptr;
            }

            // An ERROR for this request, or one without rid (our message was unreadable).
            if (r.type == "ERROR" && (!has_rid || got_rid == rid)) {
                last_error_ = get<std::string>(r.body, "code", "ERROR.body") + ": " +
                              get<std::string>(r.body, "message", "ERROR.body");
                const msgpack::object* retryable = find(r.body, "retryable");
                if (has_rid && retryable && retryable->type == msgpack::type::BOOLEAN && retryable->via.boolean)
                    return kRetryableError;
                fail(kErrorReply, request + " failed: " + last_error_);
            }
            if (got_rid != rid) {
                std::cerr << "worldsim_client: note: skipping " << r.type << " for rid " << got_rid
                          << " while waiting for rid " << rid << "\n";
                continue;
            }
            auto v = get<std::vector<int64_t>>(msg, "v", r.type);
            if (v.size() != 2 || v[0] != kMajor)
                fail(kProtocol, r.type + " has protocol version " + (v.empty() ? "?" : std::to_string(v[0])) +
                                    ".x, this client speaks 1.x");
            if (r.type != expected)
                fail(kProtocol, request + " was answered with " + r.type + ", expected " + expected);
            return kReply;
        }
    }

    zmq::context_t& ctx_;
    const Options& opt_;
    const std::vector<std::string> caps_;
    std::unique_ptr<zmq::socket_t> sock_;
    std::string token_;
    std::string last_error_;
    int64_t next_rid_ = 1;
};

// The scripted input: forward for 30 ticks, turn left for 15, then forward again,
// attacking on every 10th tick. Named form: {"keys": [...], "mouse": [dx, dy]}.
void pack_action(Packer& pk, long t) {
    std::vector<std::string> keys;
    keys.push_back((t >= 30 && t < 45) ? "turn_left" : "forward");
    if (t % 10 == 9) keys.push_back("attack");
    pk.pack_map(2);
    pk.pack("keys");  pk.pack(keys);
    pk.pack("mouse"); pk.pack_array(2); pk.pack(0.0); pk.pack(0.0);
}

// HELLO asking for the connection's capabilities -> WELCOME: checks the major version and that
// `needed` was granted, keeps the token for HELLO {resume} and prints the server line. What else
// WELCOME holds depends on the server (world + schema, or record), so the caller reads that.
Reply handshake(Connection& conn, const std::string& needed) {
    Reply welcome = conn.request("HELLO", "", [&](Packer& pk) {
        pk.pack_map(2);
        pk.pack("client");       pk.pack(kClientName);
        pk.pack("capabilities"); pk.pack(conn.capabilities());
    }, "WELCOME");
    const msgpack::object& wb = welcome.body;
    auto proto = get<std::vector<int64_t>>(wb, "protocol", "WELCOME.body");
    if (proto.size() != 2 || proto[0] != kMajor) fail(kProtocol, "server speaks another major protocol version");
    conn.set_token(get<std::string>(wb, "token", "WELCOME.body"));  // for HELLO {resume} after a timeout
    auto caps = get<std::vector<std::string>>(wb, "capabilities", "WELCOME.body");
    if (std::find(caps.begin(), caps.end(), needed) == caps.end()) {
        // WELCOME lists only what we asked for and the server has; say which kind of server it is
        const msgpack::object* world = find(wb, "world");
        const msgpack::object* record = find(wb, "record");
        std::string kind;
        if (needed == "record" && world && world->type == msgpack::type::MAP)
            kind = "; it serves a world, not recordings: record into a `worldsim record bridge --out DIR` server";
        else if (needed != "record" && record && record->type == msgpack::type::MAP &&
                 !(world && world->type == msgpack::type::MAP))
            kind = "; it only records (worldsim record bridge): use --record";
        fail(kProtocol, "server does not offer the '" + needed + "' capability (offers: " +
                            (caps.empty() ? "none of " + join(conn.capabilities()) : join(caps)) + ")" + kind);
    }
    std::cout << "server: " << get<std::string>(wb, "server", "WELCOME.body") << ", protocol " << proto[0] << "."
              << proto[1] << std::endl;
    return welcome;
}

// ---- play mode: lockstep ticks of a served world, frames written to --out ----

int run_play(const Options& opt) {
    std::ofstream out(opt.out, std::ios::binary | std::ios::trunc);
    if (!out) fail(kUsage, "cannot open " + opt.out + " for writing");

    zmq::context_t ctx(1);
    Connection conn(ctx, opt, {"lockstep"});

    // ---- handshake ----
    Reply welcome = handshake(conn, "lockstep");
    const msgpack::object& wb = welcome.body;
    const msgpack::object& world = get_map(wb, "world", "WELCOME.body");
    auto name = get<std::string>(world, "name", "WELCOME.body.world");
    auto res = get<std::vector<int64_t>>(world, "resolution", "WELCOME.body.world");
    auto tick_rate = get<double>(world, "tick_rate", "WELCOME.body.world");
    if (res.size() != 2 || res[0] <= 0 || res[1] <= 0) fail(kProtocol, "WELCOME.body.world.resolution must be [H, W]");
    const msgpack::object& schema = get_map(wb, "schema", "WELCOME.body");
    auto buttons = get<std::vector<std::string>>(schema, "buttons", "WELCOME.body.schema");
    const int64_t H = res[0], W = res[1];
    std::cout << "world: " << name << ", " << H << "x" << W << " (HxW), " << tick_rate << " ticks/s\n"
              << "buttons: " << join(buttons) << std::endl;

    // ---- open a lockstep session ----
    Reply opened = conn.request("OPEN", "", [&](Packer& pk) {
        pk.pack_map(2);
        pk.pack("mode"); pk.pack("lockstep");
        pk.pack("seed"); pk.pack(opt.seed);
    }, "OK");
    const std::string sid = get<std::string>(opened.body, "sid", "OK.body");
    int64_t tick = get<int64_t>(opened.body, "tick", "OK.body");
    std::cout << "session: " << sid << " (seed " << opt.seed << ", tick " << tick << ")" << std::endl;

    // ---- lockstep loop: one STEP -> one OBS ----
    uint64_t frames_bytes = 0, audio_samples = 0;
    double step_ms_total = 0.0;
    for (long t = 0; t < opt.ticks; ++t) {
        const auto t0 = Clock::now();
        Reply obs = conn.request("STEP", sid, [&](Packer& pk) {
            pk.pack_map(2);
            pk.pack("sid");    pk.pack(sid);
            pk.pack("action"); pack_action(pk, t);
        }, "OBS");
        step_ms_total += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();

        const std::string where = "OBS(tick " + std::to_string(t + 1) + ").body";
        const int64_t obs_tick = get<int64_t>(obs.body, "tick", where);
        if (obs_tick != tick + 1)
            fail(kProtocol, where + ".tick is " + std::to_string(obs_tick) + ", expected " + std::to_string(tick + 1));
        tick = obs_tick;

        const msgpack::object* frame_o = find(obs.body, "frame");
        if (!frame_o) fail(kProtocol, where + ".frame is missing");
        ArrayView frame = check_array(*frame_o, "uint8", 1, where + ".frame");
        if (frame.shape != std::vector<int64_t>{H, W, 3})
            fail(kProtocol, where + ".frame.shape is not [" + std::to_string(H) + ", " + std::to_string(W) + ", 3]");
        out.write(frame.data, static_cast<std::streamsize>(frame.size));
        if (!out) fail(kUsage, "write to " + opt.out + " failed");
        frames_bytes += frame.size;

        const msgpack::object* audio_o = find(obs.body, "audio");
        if (audio_o && audio_o->type != msgpack::type::NIL) {  // nil = no audio for this world
            ArrayView audio = check_array(*audio_o, "int16", 2, where + ".audio");
            if (audio.shape.size() != 2) fail(kProtocol, where + ".audio.shape must be [S, C]");
            if (get<double>(*audio_o, "rate", where + ".audio") <= 0) fail(kProtocol, where + ".audio.rate must be > 0");
            audio_samples += static_cast<uint64_t>(audio.shape[0]);  // sample frames (per channel)
        }
    }
    out.close();
    if (!out) fail(kUsage, "closing " + opt.out + " failed");

    // ---- close the session ----
    conn.request("CLOSE", sid, [&](Packer& pk) {
        pk.pack_map(1);
        pk.pack("sid"); pk.pack(sid);
    }, "OK");

    char mean[32];
    std::snprintf(mean, sizeof mean, "%.3f", step_ms_total / static_cast<double>(opt.ticks));
    std::cout << "ok ticks=" << opt.ticks << " frames_bytes=" << frames_bytes << " audio_samples=" << audio_samples
              << " mean_step_ms=" << mean << std::endl;
    return kOk;
}

// ---- record mode: the frames of --record sent as a recording to a `worldsim record bridge` ----

// The schema the recording declares: DOOM as played in ViZDoom (worldsim.actions.VIZDOOM_SCHEMA),
// the buttons pack_action's scripted input names.
const std::vector<std::string> kRecordButtons = {"forward",   "back",       "strafe_left", "strafe_right", "turn_left",
                                                 "turn_right", "attack",     "use",         "run"};
const std::vector<std::string> kRecordAxes = {"mouse_dx", "mouse_dy"};

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

int run_record(const Options& opt) {
    const int64_t H = opt.height, W = opt.width;
    FrameFile file(opt.record, opt.height, opt.width);
    const long n = opt.ticks_given ? std::min(opt.ticks, file.frames()) : file.frames();

    zmq::context_t ctx(1);
    Connection conn(ctx, opt, {"record"});

    // ---- handshake: a record server has no world or schema, only `record` ----
    Reply welcome = handshake(conn, "record");
    const msgpack::object& rec_info = get_map(welcome.body, "record", "WELCOME.body");
    auto res = get<std::vector<int64_t>>(rec_info, "resolution", "WELCOME.body.record");
    if (res.size() != 2 || res[0] <= 0 || res[1] <= 0) fail(kProtocol, "WELCOME.body.record.resolution must be [H, W]");
    // The server drops the connection of an oversized message without a reply (ZMQ_MAXMSGSIZE),
    // which would look like a timeout: say so up front instead.
    const size_t frame_bytes = static_cast<size_t>(H * W * 3);
    if (const msgpack::object* limits = find(welcome.body, "limits")) {
        const msgpack::object* max = find(*limits, "max_message_bytes");
        if (max && max->type == msgpack::type::POSITIVE_INTEGER && frame_bytes + 1024 > max->as<uint64_t>())
            fail(kUsage, "--size " + std::to_string(H) + "x" + std::to_string(W) + ": a frame is " +
                             std::to_string(frame_bytes) + " bytes, the server takes messages of at most " +
                             std::to_string(max->as<uint64_t>()) + " bytes");
    }
    std::cout << "record: " << n << " frames of " << H << "x" << W << " (HxW) from " << opt.record << ", stored at "
              << res[0] << "x" << res[1] << ", " << opt.tick_rate << " ticks/s" << std::endl;

    // ---- open the recording ----
    Reply opened = conn.request("REC_OPEN", "", [&](Packer& pk) {
        pk.pack_map(5);
        pk.pack("schema");    pk.pack_map(2);
        pk.pack("buttons");   pk.pack(kRecordButtons);
        pk.pack("axes");      pk.pack(kRecordAxes);
        pk.pack("tick_rate"); pk.pack(opt.tick_rate);
        pk.pack("audio");     pk.pack_nil();  // raw RGB files carry no sound
        pk.pack("fields");    pk.pack_array(0);
        pk.pack("meta");      pk.pack_map(2);
        pk.pack("source");    pk.pack("worldsim_client");
        pk.pack("map");       pk.pack("replay");
    }, "OK");
    const std::string rec = get<std::string>(opened.body, "rec", "OK.body");
    std::cout << "recording: " << rec << " (episode " << get<std::string>(opened.body, "episode", "OK.body") << ")"
              << std::endl;

    // ---- one REC_STEP per frame: what the player saw, and the scripted action taken on it ----
    for (long t = 0; t < n; ++t) {
        const std::vector<char>& frame = file.next();
        Reply ok = conn.request("REC_STEP", rec, [&](Packer& pk) {
            pk.pack_map(2);
            pk.pack("frame");  pk.pack_map(3);
            pk.pack("dtype");  pk.pack("uint8");
            pk.pack("shape");  pk.pack_array(3); pk.pack(H); pk.pack(W); pk.pack(3);
            pk.pack("data");   pk.pack_bin(static_cast<uint32_t>(frame.size()));
                               pk.pack_bin_body(frame.data(), static_cast<uint32_t>(frame.size()));
            pk.pack("action"); pack_action(pk, t);
        }, "OK");
        // steps counts what the server wrote: a skipped or doubled step would show here
        const std::string where = "OK(REC_STEP " + std::to_string(t) + ").body";
        const int64_t steps = get<int64_t>(ok.body, "steps", where);
        if (steps != t + 1)
            fail(kProtocol, where + ".steps is " + std::to_string(steps) + ", expected " + std::to_string(t + 1));
    }

    // ---- close: the server writes the last episode and lists them all ----
    Reply closed = conn.request("REC_CLOSE", rec, [&](Packer& pk) {
        pk.pack_map(1);
        pk.pack("ended_by"); pk.pack(n < file.frames() ? "tick_limit" : "end_of_file");
    }, "OK");
    const int64_t steps = get<int64_t>(closed.body, "steps", "OK(REC_CLOSE).body");
    if (steps != n)
        fail(kProtocol, "OK(REC_CLOSE).body.steps is " + std::to_string(steps) + ", expected " + std::to_string(n));
    auto episodes = get<std::vector<std::string>>(closed.body, "episodes", "OK(REC_CLOSE).body");
    std::string list;
    for (const auto& e : episodes) list += (list.empty() ? "" : ",") + e;
    std::cout << "written to: " << get<std::string>(closed.body, "out", "OK(REC_CLOSE).body") << "\n"
              << "ok recorded=" << steps << " episodes=" << list << std::endl;
    return kOk;
}

}  // namespace

int main(int argc, char** argv) try {
    const Options opt = parse_args(argc, argv);
    return opt.record.empty() ? run_play(opt) : run_record(opt);
} catch (const std::exception& e) {  // msgpack::unpack_error, zmq::error_t, ...
    fail(kProtocol, std::string("unexpected exception: ") + e.what());
}
