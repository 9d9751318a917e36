// worldsim_client: reference C++17 client for the worldsim bridge protocol 1.2
// (engine_bridge/PROTOCOL.md), written as a starting point for an Unreal-side client.
//
//   play:     worldsim_client --addr tcp://127.0.0.1:5555 --ticks 100 --out frames.rgb [--seed N]
//                             [--timeout-ms 5000] [--retries 0] [--load NAME] [--save NAME]
//   realtime: worldsim_client --addr tcp://127.0.0.1:5555 --realtime --ticks 100 --out frames.rgb [--seed N]
//                             [--timeout-ms 5000] [--load NAME] [--save NAME]
//   saves:    worldsim_client --addr tcp://127.0.0.1:5555 --list-saves | --delete-save NAME [--timeout-ms 5000]
//                             [--retries 0]
//   record:   worldsim_client --addr tcp://127.0.0.1:5560 --record frames.rgb [--size 64x64] [--tick-rate 17.5]
//                             [--ticks N] [--timeout-ms 5000] [--retries 0]
//
// Play mode (a server with a world, capability "lockstep"): HELLO -> WELCOME, OPEN lockstep ->
// OK {sid}, then one STEP -> OBS per tick (raw RGB frames are appended to --out), then CLOSE -> OK.
//
// Realtime mode (capability "realtime": what a game engine uses): HELLO -> WELCOME, OPEN realtime
// {seed, credit: 2, action: the first tick's} -> OK {sid}. The server then ticks the session at the
// world's tick rate on its own and pushes an OBS (no rid) per tick while we have credit, each
// spending one; without credit it keeps only the newest frame and counts the ones it overwrote
// (OBS.dropped). For each OBS consumed the client returns one CREDIT {n: 1} and sends ACT {action}
// with the scripted action for the next tick (neither gets a reply; an invalid ACT gets an ERROR).
// After --ticks frames: CLOSE -> OK. Frames go to --out as in play mode. These ACT/CREDIT
// messages double as the heartbeat, so no PING is needed. Realtime mode does not reconnect: a
// frame stream that stops for --timeout-ms ends the program (exit 2), so --retries is refused.
//
// Saves (capability "save", protocol 1.2: a `worldsim serve --save-dir DIR` server), in both play
// modes: --load NAME replaces OPEN by LOAD {name, mode, credit[, seed]} -> OK {sid, tick}, a new
// session continuing the save (with --seed: new random draws from the saved tick on, else exactly
// as the saved session would have gone on); --save NAME sends SAVE {sid, name} -> OK {name, tick,
// bytes} after the last tick, before CLOSE. The scripted action follows the session's tick, so a
// run loaded from a save made after T ticks plays what an uninterrupted run plays from tick T.
//
// --list-saves sends SAVES -> OK {saves: [{name, tick, seed, views, bytes, saved | error}]} and
// prints a line per save; --delete-save NAME sends DELETE_SAVE {name} -> OK: a game's save menu.
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
//
// Layout: wire.hpp (message envelope, MessagePack reading, exit codes), options.hpp (command
// line), connection.hpp (DEALER connection with Lazy Pirate retry, handshake), frames.hpp (frames
// in and out); this file: the scripted action and the three modes.
#include "connection.hpp"
#include "frames.hpp"
#include "options.hpp"
#include "wire.hpp"

#include <msgpack.hpp>
#include <zmq.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

using namespace worldsim_bridge;

namespace {

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

// ---- play modes: a served world's frames written to --out ----

// CLOSE -> OK: ends a play or realtime session.
void close_session(Connection& conn, const std::string& sid) {
    conn.request("CLOSE", sid, [&](Packer& pk) {
        pk.pack_map(1);
        pk.pack("sid"); pk.pack(sid);
    }, "OK");
}

// The capabilities a play mode asks for: its mode, and "save" when --load or --save is given.
std::vector<std::string> play_capabilities(const Options& opt, const std::string& mode) {
    std::vector<std::string> caps{mode};
    if (!opt.load.empty() || !opt.save.empty()) caps.push_back("save");
    return caps;
}

struct Opened {
    std::string sid;
    int64_t tick;
};

// OPEN -> OK {sid, tick: 0}, or with --load: LOAD -> OK {sid, tick} (the save's tick). A realtime
// session starts ticking at once; OPEN gives it the first tick's action, a loaded one holds none
// until the first ACT.
Opened open_session(Connection& conn, const Options& opt, const Reply& welcome, const std::string& mode, int credit) {
    const bool realtime = mode == "realtime";
    if (!opt.load.empty() || !opt.save.empty())
        require_capability(welcome, "save", "start the server with `worldsim serve --save-dir DIR`");
    Reply opened = opt.load.empty()
        ? conn.request("OPEN", "", [&](Packer& pk) {
              pk.pack_map(realtime ? 4 : 2);
              pk.pack("mode"); pk.pack(mode);
              pk.pack("seed"); pk.pack(opt.seed);
              if (realtime) {
                  pk.pack("credit"); pk.pack(credit);
                  pk.pack("action"); pack_action(pk, 0);
              }
          }, "OK")
        : conn.request("LOAD", "", [&](Packer& pk) {
              pk.pack_map(3 + (opt.seed_given ? 1 : 0));
              pk.pack("name");   pk.pack(opt.load);
              pk.pack("mode");   pk.pack(mode);
              pk.pack("credit"); pk.pack(credit);
              if (opt.seed_given) { pk.pack("seed"); pk.pack(opt.seed); }
          }, "OK");
    Opened o{get<std::string>(opened.body, "sid", "OK.body"), get<int64_t>(opened.body, "tick", "OK.body")};
    std::cout << "session: " << o.sid << " (" << mode;
    if (!opt.load.empty()) std::cout << ", loaded from save '" << opt.load << "'";
    if (opt.load.empty() || opt.seed_given) std::cout << ", seed " << opt.seed;
    std::cout << ", tick " << o.tick;
    if (realtime) std::cout << ", credit " << credit;
    std::cout << ")" << std::endl;
    return o;
}

// SAVE -> OK {name, tick, bytes}: the session kept on the server's disk (--save).
void save_session(Connection& conn, const Options& opt, const std::string& sid) {
    if (opt.save.empty()) return;
    Reply saved = conn.request("SAVE", sid, [&](Packer& pk) {
        pk.pack_map(2);
        pk.pack("sid");  pk.pack(sid);
        pk.pack("name"); pk.pack(opt.save);
    }, "OK");
    std::cout << "saved: " << get<std::string>(saved.body, "name", "OK(SAVE).body") << " (tick "
              << get<int64_t>(saved.body, "tick", "OK(SAVE).body") << ", "
              << get<int64_t>(saved.body, "bytes", "OK(SAVE).body") << " bytes)" << std::endl;
}

// play: lockstep ticks, one STEP -> OBS each
int run_play(const Options& opt) {
    std::ofstream out(opt.out, std::ios::binary | std::ios::trunc);
    if (!out) fail(kUsage, "cannot open " + opt.out + " for writing");

    zmq::context_t ctx(1);
    Connection conn(ctx, opt, play_capabilities(opt, "lockstep"));

    // ---- handshake ----
    Reply welcome = handshake(conn, "lockstep");
    const WorldInfo world = read_world(welcome);

    // ---- open a lockstep session (or load a save) ----
    const Opened opened = open_session(conn, opt, welcome, "lockstep", 0);
    const std::string sid = opened.sid;
    int64_t tick = opened.tick;

    // ---- lockstep loop: one STEP -> one OBS ----
    uint64_t frames_bytes = 0, audio_samples = 0;
    double step_ms_total = 0.0;
    for (long t = 0; t < opt.ticks; ++t) {
        const auto t0 = Clock::now();
        Reply obs = conn.request("STEP", sid, [&](Packer& pk) {
            pk.pack_map(2);
            pk.pack("sid");    pk.pack(sid);
            pk.pack("action"); pack_action(pk, static_cast<long>(tick));  // the session's tick: a loaded run goes on
        }, "OBS");
        step_ms_total += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();

        const std::string where = "OBS(tick " + std::to_string(t + 1) + ").body";
        const int64_t obs_tick = get<int64_t>(obs.body, "tick", where);
        if (obs_tick != tick + 1)
            fail(kProtocol, where + ".tick is " + std::to_string(obs_tick) + ", expected " + std::to_string(tick + 1));
        tick = obs_tick;
        frames_bytes += take_obs(obs.body, where, world, out, opt.out, audio_samples);
    }
    out.close();
    if (!out) fail(kUsage, "closing " + opt.out + " failed");

    // ---- keep it on the server's disk (--save), then close the session ----
    save_session(conn, opt, sid);
    close_session(conn, sid);

    char mean[32];
    std::snprintf(mean, sizeof mean, "%.3f", step_ms_total / static_cast<double>(opt.ticks));
    std::cout << "ok ticks=" << opt.ticks << " frames_bytes=" << frames_bytes << " audio_samples=" << audio_samples
              << " mean_step_ms=" << mean << std::endl;
    return kOk;
}

// realtime: the server ticks on its own clock and pushes OBS while we have credit
int run_realtime(const Options& opt) {
    constexpr int kCredit = 2;  // frames in flight: one being consumed, one on its way
    std::ofstream out(opt.out, std::ios::binary | std::ios::trunc);
    if (!out) fail(kUsage, "cannot open " + opt.out + " for writing");

    zmq::context_t ctx(1);
    Connection conn(ctx, opt, play_capabilities(opt, "realtime"));

    // ---- handshake ----
    Reply welcome = handshake(conn, "realtime");
    const WorldInfo world = read_world(welcome);

    // ---- open a realtime session (or load a save): it starts ticking at once ----
    const Opened opened = open_session(conn, opt, welcome, "realtime", kCredit);
    const auto t_open = Clock::now();
    const std::string sid = opened.sid;
    int64_t tick = opened.tick;

    // ---- frames as the server pushes them; per frame one CREDIT back and the next action ----
    uint64_t frames_bytes = 0, audio_samples = 0;
    int64_t dropped = 0, act_rid = -1, credit_rid = -1;
    auto t_last = t_open;
    for (long n = 0; n < opt.ticks; ++n) {
        Reply obs;
        if (!conn.receive(obs))
            fail(kTimeout, "no OBS within " + std::to_string(opt.timeout_ms) + " ms (frame " + std::to_string(n + 1) +
                               " of " + std::to_string(opt.ticks) + "): is the server running at " + opt.addr + "?");
        if (obs.type == "ERROR") {  // about an ACT or CREDIT of ours (or a message it could not read)
            const std::string about = obs.rid == act_rid ? "ACT" : obs.rid == credit_rid ? "CREDIT" : "a message";
            fail(kErrorReply, about + " (rid " + std::to_string(obs.rid) + ") failed: " + error_text(obs));
        }
        if (obs.type != "OBS" || obs.rid >= 0)
            fail(kProtocol, "got " + obs.type + " (rid " + std::to_string(obs.rid) + ") while waiting for realtime OBS");
        if (obs.sid != sid) fail(kProtocol, "got an OBS for session '" + obs.sid + "', ours is '" + sid + "'");
        t_last = Clock::now();

        const std::string where = "OBS(frame " + std::to_string(n + 1) + ").body";
        const int64_t obs_tick = get<int64_t>(obs.body, "tick", where);
        if (obs_tick <= tick)  // ticks may be skipped (frames dropped), never repeated
            fail(kProtocol, where + ".tick is " + std::to_string(obs_tick) + ", expected > " + std::to_string(tick));
        tick = obs_tick;
        dropped = get<int64_t>(obs.body, "dropped", where);
        frames_bytes += take_obs(obs.body, where, world, out, opt.out, audio_samples);

        if (n + 1 < opt.ticks) {  // after the last frame nothing but CLOSE
            credit_rid = conn.send("CREDIT", sid, [](Packer& pk) {
                pk.pack_map(1);
                pk.pack("n"); pk.pack(1);
            });
            // the next tick's action (held by the server until replaced)
            act_rid = conn.send("ACT", sid, [&](Packer& pk) {
                pk.pack_map(1);
                pk.pack("action"); pack_action(pk, static_cast<long>(obs_tick));
            });
        }
    }
    out.close();
    if (!out) fail(kUsage, "closing " + opt.out + " failed");

    // ---- --save (at the tick the server has reached), then close (frames in flight are skipped) ----
    save_session(conn, opt, sid);
    close_session(conn, sid);

    const double secs = std::chrono::duration<double>(t_last - t_open).count();
    char fps[32];
    std::snprintf(fps, sizeof fps, "%.1f", secs > 0 ? static_cast<double>(opt.ticks) / secs : 0.0);
    std::cout << "ok realtime ticks=" << opt.ticks << " frames_bytes=" << frames_bytes << " dropped=" << dropped
              << " fps=" << fps << std::endl;
    return kOk;
}

// ---- saves: the server's save menu (--list-saves, --delete-save) ----

int run_saves(const Options& opt) {
    zmq::context_t ctx(1);
    Connection conn(ctx, opt, {"lockstep", "save"});
    Reply welcome = handshake(conn, "lockstep");
    require_capability(welcome, "save", "start the server with `worldsim serve --save-dir DIR`");
    if (!opt.delete_save.empty()) {
        conn.request("DELETE_SAVE", "", [&](Packer& pk) {
            pk.pack_map(1);
            pk.pack("name"); pk.pack(opt.delete_save);
        }, "OK");
        std::cout << "ok deleted=" << opt.delete_save << std::endl;
        return kOk;
    }
    Reply listed = conn.request("SAVES", "", [](Packer& pk) { pk.pack_map(0); }, "OK");
    const msgpack::object* saves = find(listed.body, "saves");
    if (!saves || saves->type != msgpack::type::ARRAY) fail(kProtocol, "OK(SAVES).body.saves must be an array");
    for (uint32_t i = 0; i < saves->via.array.size; ++i) {
        const msgpack::object& e = saves->via.array.ptr[i];
        const std::string where = "OK(SAVES).body.saves[" + std::to_string(i) + "]";
        std::cout << "save: " << get<std::string>(e, "name", where);
        if (find(e, "error")) {
            std::cout << " error=" << get<std::string>(e, "error", where) << std::endl;
            continue;
        }
        std::cout << " tick=" << get<int64_t>(e, "tick", where) << " seed=" << get<int64_t>(e, "seed", where)
                  << " views=" << get<int64_t>(e, "views", where) << " bytes=" << get<int64_t>(e, "bytes", where)
                  << " saved=" << get<std::string>(e, "saved", where) << std::endl;
    }
    std::cout << "ok saves=" << saves->via.array.size << std::endl;
    return kOk;
}

// ---- record mode: the frames of --record sent as a recording to a `worldsim record bridge` ----

// The schema the recording declares: DOOM as played in ViZDoom (worldsim.actions.VIZDOOM_SCHEMA),
// the buttons pack_action's scripted input names.
const std::vector<std::string> kRecordButtons = {"forward",   "back",       "strafe_left", "strafe_right", "turn_left",
                                                 "turn_right", "attack",     "use",         "run"};
const std::vector<std::string> kRecordAxes = {"mouse_dx", "mouse_dy"};

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
    if (!opt.record.empty()) return run_record(opt);
    if (opt.list_saves || !opt.delete_save.empty()) return run_saves(opt);
    return opt.realtime ? run_realtime(opt) : run_play(opt);
} catch (const std::exception& e) {  // msgpack::unpack_error, zmq::error_t, ...
    fail(kProtocol, std::string("unexpected exception: ") + e.what());
}
