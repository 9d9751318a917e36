// wire.hpp: what the messages of the worldsim bridge protocol (engine_bridge/PROTOCOL.md) are made
// of, for worldsim_client: the {v, type, rid, sid, body} envelope packed and unpacked (Reply) and a
// tolerant reader for MessagePack maps and arrays. The exit codes and fail() live here too, because
// a field missing or of the wrong type ends the program (exit 4) right where it is read.
#pragma once

#include <msgpack.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace worldsim_bridge {

using Packer = msgpack::packer<msgpack::sbuffer>;
using BodyFn = std::function<void(Packer&)>;  // must pack exactly one map

inline constexpr int kMajor = 1, kMinor = 2;  // the protocol version we speak
enum Exit { kOk = 0, kUsage = 1, kTimeout = 2, kErrorReply = 3, kProtocol = 4 };

[[noreturn]] inline void fail(int code, const std::string& msg) {
    std::cerr << "worldsim_client: error: " << msg << std::endl;
    std::exit(code);  // skips destructors on purpose: no zmq_ctx_term wait for pending messages
}

// "a, b, c", for messages.
inline std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

// ---- reading MessagePack maps (tolerant reader: unknown keys are ignored) ----

inline const msgpack::object* find(const msgpack::object& map, const char* key) {
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

inline const msgpack::object& get_map(const msgpack::object& map, const char* key, const std::string& where) {
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

inline ArrayView check_array(const msgpack::object& a, const char* dtype, size_t itemsize, const std::string& where) {
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

// ---- the envelope: one ZeroMQ frame holding one MessagePack map {v, type, rid, sid, body} ----

// A message as received (reply, pushed OBS or ERROR).
struct Reply {
    msgpack::object_handle handle;  // owns the memory `body` points into
    std::string type;
    int64_t rid = -1;               // -1: none (a realtime OBS, or an ERROR for an unreadable message)
    std::string sid;                // empty: none
    msgpack::object body;           // a map (empty map when the body was absent/nil)
};

// {v, type, rid, sid, body} into `buf`.
inline void pack_envelope(msgpack::sbuffer& buf, const std::string& type, int64_t rid, const std::string& sid,
                          const BodyFn& body) {
    Packer pk(buf);
    pk.pack_map(5);
    pk.pack("v");    pk.pack_array(2); pk.pack(kMajor); pk.pack(kMinor);
    pk.pack("type"); pk.pack(type);
    pk.pack("rid");  pk.pack(rid);
    pk.pack("sid");  if (sid.empty()) pk.pack_nil(); else pk.pack(sid);
    pk.pack("body"); body(pk);
}

// "CODE: message" of an ERROR.
inline std::string error_text(const Reply& r) {
    return get<std::string>(r.body, "code", "ERROR.body") + ": " + get<std::string>(r.body, "message", "ERROR.body");
}

}  // namespace worldsim_bridge
