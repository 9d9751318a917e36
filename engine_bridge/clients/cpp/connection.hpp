// connection.hpp: one DEALER connection to a bridge server: requests that wait at most
// --timeout-ms for their reply and retry Lazy Pirate style (reconnect, HELLO {resume}, resend),
// realtime mode's sends without a reply and the messages the server pushes, and the
// HELLO -> WELCOME handshake every mode starts with.
#pragma once

#include "options.hpp"
#include "wire.hpp"

#include <msgpack.hpp>
#include <zmq.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace worldsim_bridge {

using Clock = std::chrono::steady_clock;
inline constexpr const char* kClientName = "worldsim_client (C++ reference)";  // HELLO.client

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
        pack_envelope(buf, type, rid, sid, body);
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

    // Sends a message that gets no reply (realtime ACT, CREDIT) and returns its rid: an ERROR
    // about it (e.g. INVALID_ACTION) arrives later through receive(), carrying that rid.
    int64_t send(const std::string& type, const std::string& sid, const BodyFn& body) {
        const int64_t rid = next_rid_++;
        msgpack::sbuffer buf;
        pack_envelope(buf, type, rid, sid, body);
        if (!sock_->send(zmq::buffer(buf.data(), buf.size()), zmq::send_flags::dontwait))
            fail(kTimeout, "could not queue " + type + " (send queue full: server unreachable?)");
        return rid;
    }

    // The next message the server sends of its own accord (a realtime OBS, an ERROR about a
    // send()), waiting at most --timeout-ms; false on timeout. No reconnect: the caller decides.
    bool receive(Reply& r) {
        if (!next_message(Clock::now() + std::chrono::milliseconds(opt_.timeout_ms), r)) return false;
        check_version(r);
        return true;
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
        pack_envelope(buf, "HELLO", rid, "", [&](Packer& pk) {
            pk.pack_map(3);
            pk.pack("client"); pk.pack(kClientName);
            pk.pack("capabilities"); pk.pack(caps_);
            pk.pack("resume"); pk.pack(token_);
        });
        Reply w;
        if (!sock_->send(zmq::buffer(buf.data(), buf.size()), zmq::send_flags::dontwait) ||
            wait(rid, "HELLO {resume}", "WELCOME", w) != kReply)
            return false;
        if (!get<bool>(w.body, "resumed", "WELCOME.body"))
            fail(kProtocol, "server did not resume our sessions (token expired?)");
        return true;
    }

    // Receives and unpacks the next message, waiting until `deadline`; false on timeout.
    bool next_message(Clock::time_point deadline, Reply& r) {
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            zmq::pollitem_t item{sock_->handle(), 0, ZMQ_POLLIN, 0};
            if (left.count() > 0) zmq::poll(&item, 1, left);
            if (!(item.revents & ZMQ_POLLIN)) return false;
            zmq::message_t frame;
            if (!sock_->recv(frame, zmq::recv_flags::dontwait)) continue;
            if (frame.more()) fail(kProtocol, "got a multipart message; the protocol uses single frames");

            r.handle = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
            const msgpack::object& msg = r.handle.get();
            if (msg.type != msgpack::type::MAP) fail(kProtocol, "reply is not a MessagePack map");
            r.type = get<std::string>(msg, "type", "reply");
            const msgpack::object* rid_o = find(msg, "rid");
            r.rid = rid_o && rid_o->type == msgpack::type::POSITIVE_INTEGER ? rid_o->as<int64_t>() : -1;
            const msgpack::object* sid_o = find(msg, "sid");
            r.sid = sid_o && sid_o->type == msgpack::type::STR ? sid_o->as<std::string>() : std::string();
            const msgpack::object* body = find(msg, "body");
            if (body && body->type == msgpack::type::MAP) {
                r.body = *body;
            } else {  // absent or nil body = empty map
                r.body.type = msgpack::type::MAP;
                r.body.via.map.size = 0;
                r.body.via.map.ptr = nullptr;
            }
            return true;
        }
    }

    static void check_version(const Reply& r) {
        auto v = get<std::vector<int64_t>>(r.handle.get(), "v", r.type);
        if (v.size() != 2 || v[0] != kMajor)
            fail(kProtocol, r.type + " has protocol version " + (v.empty() ? "?" : std::to_string(v[0])) +
                                ".x, this client speaks 1.x");
    }

    // Waits up to --timeout-ms for the reply to `rid` (replies to older requests are skipped,
    // and so are realtime OBS pushed meanwhile, e.g. while a CLOSE is on its way).
    // kNoReply on timeout, kRetryableError for an ERROR {retryable: true} (text in last_error_);
    // any other ERROR reply or an unexpected reply type ends the program.
    Status wait(int64_t rid, const std::string& request, const std::string& expected, Reply& r) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(opt_.timeout_ms);
        for (;;) {
            if (!next_message(deadline, r)) return kNoReply;
            // An ERROR for this request, or one without rid (our message was unreadable).
            if (r.type == "ERROR" && (r.rid < 0 || r.rid == rid)) {
                last_error_ = error_text(r);
                const msgpack::object* retryable = find(r.body, "retryable");
                if (r.rid >= 0 && retryable && retryable->type == msgpack::type::BOOLEAN && retryable->via.boolean)
                    return kRetryableError;
                fail(kErrorReply, request + " failed: " + last_error_);
            }
            if (r.rid != rid) {
                if (!(r.type == "OBS" && r.rid < 0))  // a realtime frame is no news
                    std::cerr << "worldsim_client: note: skipping " << r.type << " for rid " << r.rid
                              << " while waiting for rid " << rid << "\n";
                continue;
            }
            check_version(r);
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

// HELLO asking for the connection's capabilities -> WELCOME: checks the major version and that
// `needed` was granted, keeps the token for HELLO {resume} and prints the server line. What else
// WELCOME holds depends on the server (world + schema, or record), so the caller reads that.
inline Reply handshake(Connection& conn, const std::string& needed) {
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

// After the handshake: fail (exit 4) unless WELCOME granted `cap`; `hint` says how to get a
// server that offers it.
inline void require_capability(const Reply& welcome, const std::string& cap, const std::string& hint) {
    auto caps = get<std::vector<std::string>>(welcome.body, "capabilities", "WELCOME.body");
    if (std::find(caps.begin(), caps.end(), cap) == caps.end())
        fail(kProtocol, "server does not offer the '" + cap + "' capability (offers: " + join(caps) + "): " + hint);
}

}  // namespace worldsim_bridge
