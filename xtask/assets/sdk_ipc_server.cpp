// sdk_ipc_server: the SDK's IPC server as it ships in release builds, for
// `cargo xtask e2e sdk_`: websocketpp over standalone asio with OpenSSL,
// TLS 1.2+, the peer's certificate required and verified against a CA file
// (verify_peer | verify_fail_if_no_peer_cert), one connection at a time (a
// second upgrade gets HTTP 409), every message echoed.
//
// usage: sdk_ipc_server PORT CHAIN KEY CA
// Listens on 127.0.0.1:PORT (0: any), prints "listening <port>" on stdout
// once it accepts, logs events on stderr.
#define ASIO_STANDALONE
#define _WEBSOCKETPP_CPP11_STL_
#include <websocketpp/config/asio.hpp>
#include <websocketpp/server.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

typedef websocketpp::server<websocketpp::config::asio_tls> server;
typedef websocketpp::lib::shared_ptr<asio::ssl::context> context_ptr;

static std::string g_chain, g_key, g_ca;
static int g_open = 0;

static context_ptr on_tls_init(websocketpp::connection_hdl) {
    context_ptr ctx = websocketpp::lib::make_shared<asio::ssl::context>(
        asio::ssl::context::tls_server);
    ctx->set_options(asio::ssl::context::default_workarounds |
                     asio::ssl::context::no_sslv2 | asio::ssl::context::no_sslv3 |
                     asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1 |
                     asio::ssl::context::single_dh_use);
    ctx->use_certificate_chain_file(g_chain);
    ctx->use_private_key_file(g_key, asio::ssl::context::pem);
    ctx->load_verify_file(g_ca);
    ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
    return ctx;
}

int main(int argc, char** argv) {
    if (argc != 5) {
        std::cerr << "usage: sdk_ipc_server PORT CHAIN KEY CA" << std::endl;
        return 64;
    }
    int port = std::atoi(argv[1]);
    g_chain = argv[2];
    g_key = argv[3];
    g_ca = argv[4];
    server s;
    try {
        s.clear_access_channels(websocketpp::log::alevel::all);
        s.set_access_channels(websocketpp::log::alevel::disconnect |
                              websocketpp::log::alevel::fail);
        s.set_error_channels(websocketpp::log::elevel::all);
        s.get_alog().set_ostream(&std::cerr);
        s.init_asio();
        s.set_reuse_addr(true);
        s.set_tls_init_handler(&on_tls_init);
        s.set_validate_handler([&s](websocketpp::connection_hdl hdl) {
            server::connection_ptr con = s.get_con_from_hdl(hdl);
            if (g_open > 0) {
                std::cerr << "sdk: second connection refused: 409" << std::endl;
                con->set_status(websocketpp::http::status_code::conflict);
                return false;
            }
            return true;
        });
        s.set_open_handler([](websocketpp::connection_hdl) {
            ++g_open;
            std::cerr << "sdk: open (" << g_open << ")" << std::endl;
        });
        s.set_close_handler([](websocketpp::connection_hdl) {
            --g_open;
            std::cerr << "sdk: close (" << g_open << ")" << std::endl;
        });
        s.set_fail_handler([&s](websocketpp::connection_hdl hdl) {
            server::connection_ptr con = s.get_con_from_hdl(hdl);
            std::cerr << "sdk: fail: " << con->get_ec().message() << std::endl;
        });
        s.set_message_handler([&s](websocketpp::connection_hdl hdl, server::message_ptr msg) {
            websocketpp::lib::error_code ec;
            s.send(hdl, msg->get_payload(), msg->get_opcode(), ec);
        });
        asio::ip::tcp::endpoint ep(asio::ip::address::from_string("127.0.0.1"),
                                   static_cast<unsigned short>(port));
        s.listen(ep);
        s.start_accept();
        websocketpp::lib::asio::error_code ec;
        asio::ip::tcp::endpoint local = s.get_local_endpoint(ec);
        if (ec) {
            std::cerr << "sdk: local endpoint: " << ec.message() << std::endl;
            return 1;
        }
        std::cout << "listening " << local.port() << std::endl;
        std::cout.flush();
        s.run();
    } catch (const std::exception& e) {
        std::cerr << "sdk: " << e.what() << std::endl;
        return 1;
    }
    return 0;
}
