//! Integration tests: a real server on 127.0.0.1:0, real WebSocket clients,
//! exact frames.

mod admin;
mod apps;
mod channels;
mod cluster;
mod dev;
mod hardening;
mod longpoll;
mod presence;
mod protocol;
mod reload;
mod sandbox;
mod storage;
mod timers;
mod web;
