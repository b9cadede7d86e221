//! ECS emulator launcher (moto in a local venv, bound to loopback).
