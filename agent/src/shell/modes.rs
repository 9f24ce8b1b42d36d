//! Terminal modes a client sends with its PTY request (RFC 4254 section 8), applied to
//! the new terminal so the session's line discipline matches the user's: their erase
//! key, whether input echoes, CR/NL handling. Only modes with a clear Linux meaning are
//! applied; speeds, parity and character size are the terminal's business, not the
//! session's, and unknown opcodes are skipped as the RFC asks.

use std::os::fd::AsFd;

use burrow_proto::pb::TerminalMode;
use rustix::termios::{
    self, InputModes, LocalModes, OptionalActions, OutputModes, SpecialCodeIndex, Termios,
};

/// Applies `modes` to the terminal `fd`. A terminal that refuses keeps its defaults:
/// a session with default modes beats no session.
pub fn apply(fd: impl AsFd, modes: &[TerminalMode]) {
    if modes.is_empty() {
        return;
    }
    let Ok(mut t) = termios::tcgetattr(&fd) else { return };
    for mode in modes {
        set(&mut t, mode.opcode, mode.value);
    }
    if let Err(e) = termios::tcsetattr(&fd, OptionalActions::Now, &t) {
        tracing::debug!(error = %e, "could not apply the client's terminal modes");
    }
}

/// Applies one opcode; returns whether it was one this module knows.
pub fn set(t: &mut Termios, opcode: u32, value: u32) -> bool {
    if let Some(index) = special(opcode) {
        // 255 (`_POSIX_VDISABLE`) turns a key off; other values are one byte.
        t.special_codes[index] = u8::try_from(value).unwrap_or(255);
        return true;
    }
    let on = value != 0;
    if let Some(flag) = input(opcode) {
        t.input_modes.set(flag, on);
    } else if let Some(flag) = local(opcode) {
        t.local_modes.set(flag, on);
    } else if let Some(flag) = output(opcode) {
        t.output_modes.set(flag, on);
    } else {
        return false;
    }
    true
}

fn special(opcode: u32) -> Option<SpecialCodeIndex> {
    Some(match opcode {
        1 => SpecialCodeIndex::VINTR,
        2 => SpecialCodeIndex::VQUIT,
        3 => SpecialCodeIndex::VERASE,
        4 => SpecialCodeIndex::VKILL,
        5 => SpecialCodeIndex::VEOF,
        6 => SpecialCodeIndex::VEOL,
        7 => SpecialCodeIndex::VEOL2,
        8 => SpecialCodeIndex::VSTART,
        9 => SpecialCodeIndex::VSTOP,
        10 => SpecialCodeIndex::VSUSP,
        12 => SpecialCodeIndex::VREPRINT,
        13 => SpecialCodeIndex::VWERASE,
        14 => SpecialCodeIndex::VLNEXT,
        _ => return None,
    })
}

fn input(opcode: u32) -> Option<InputModes> {
    Some(match opcode {
        30 => InputModes::IGNPAR,
        31 => InputModes::PARMRK,
        32 => InputModes::INPCK,
        33 => InputModes::ISTRIP,
        34 => InputModes::INLCR,
        35 => InputModes::IGNCR,
        36 => InputModes::ICRNL,
        38 => InputModes::IXON,
        39 => InputModes::IXANY,
        40 => InputModes::IXOFF,
        41 => InputModes::IMAXBEL,
        42 => InputModes::IUTF8,
        _ => return None,
    })
}

fn local(opcode: u32) -> Option<LocalModes> {
    Some(match opcode {
        50 => LocalModes::ISIG,
        51 => LocalModes::ICANON,
        53 => LocalModes::ECHO,
        54 => LocalModes::ECHOE,
        55 => LocalModes::ECHOK,
        56 => LocalModes::ECHONL,
        57 => LocalModes::NOFLSH,
        58 => LocalModes::TOSTOP,
        59 => LocalModes::IEXTEN,
        60 => LocalModes::ECHOCTL,
        61 => LocalModes::ECHOKE,
        _ => return None,
    })
}

fn output(opcode: u32) -> Option<OutputModes> {
    Some(match opcode {
        70 => OutputModes::OPOST,
        72 => OutputModes::ONLCR,
        73 => OutputModes::OCRNL,
        74 => OutputModes::ONOCR,
        75 => OutputModes::ONLRET,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // pty-process registers the terminal with the runtime's reactor.
    #[tokio::test]
    async fn client_modes_reach_a_real_terminal() {
        let (pty, _pts) = pty_process::open().unwrap();
        // ECHO off, erase = ^H, ICRNL off, an unknown opcode and a speed (skipped).
        let modes = [(53, 0), (3, 8), (36, 0), (200, 1), (128, 38400)]
            .map(|(opcode, value)| TerminalMode { opcode, value });
        apply(&pty, &modes);
        let t = termios::tcgetattr(&pty).unwrap();
        assert!(!t.local_modes.contains(LocalModes::ECHO));
        assert_eq!(t.special_codes[SpecialCodeIndex::VERASE], 8);
        assert!(!t.input_modes.contains(InputModes::ICRNL));
        apply(&pty, &[TerminalMode { opcode: 53, value: 1 }]);
        assert!(termios::tcgetattr(&pty).unwrap().local_modes.contains(LocalModes::ECHO));
    }
}
