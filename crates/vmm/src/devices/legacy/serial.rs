//! The 8250/16550A UART on COM1 (`vm-superio`), wired to the terminal.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::console_out::ConsoleOut;
use crate::devices::{BusDevice, IrqLine};

/// Where the guest's console output goes.
pub enum SerialOutput {
    Stdout,
    Sink,
    File(File),
    /// Any writer (tests, benchmarks).
    Writer(Box<dyn Write + Send>),
}

impl SerialOutput {
    pub fn file(path: &Path) -> io::Result<SerialOutput> {
        Ok(SerialOutput::File(File::create(path)?))
    }

    fn into_writer(self) -> io::Result<(Box<dyn Write + Send>, Option<ConsoleOut>)> {
        Ok(match self {
            // Never written from the vCPU thread: see `console_out`.
            SerialOutput::Stdout => {
                let c = ConsoleOut::spawn(io::stdout())?;
                (Box::new(c.clone()), Some(c))
            }
            SerialOutput::Sink => (Box::new(io::sink()), None),
            SerialOutput::File(f) => (Box::new(f), None),
            SerialOutput::Writer(w) => (w, None),
        })
    }
}

/// Signals the console input loop that the guest drained the receive FIFO,
/// so input held back while it was full can be offered again.
pub struct InputDrained(pub EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// vm-superio's receive FIFO (private there).
const FIFO_SIZE: usize = 64;

type Uart = Serial<IrqLine, Arc<InputDrained>, Box<dyn Write + Send>>;

/// The UART's registers and receive FIFO, for snapshots (vm-superio's
/// `SerialState`, which has no serde of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

pub struct SerialConsole {
    uart: Uart,
    drained: Arc<InputDrained>,
    /// Output bytes the host could not take (closed pipe, full disk).
    pub lost_bytes: u64,
    /// The stdout writer, when output goes there.
    console: Option<ConsoleOut>,
}

impl SerialConsole {
    pub fn new(irq: IrqLine, output: SerialOutput) -> io::Result<SerialConsole> {
        let drained = Arc::new(InputDrained(EventFd::new(
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )?));
        let (writer, console) = output.into_writer()?;
        Ok(SerialConsole {
            uart: Serial::with_events(irq, drained.clone(), writer),
            drained,
            lost_bytes: 0,
            console,
        })
    }

    /// At the machine's end: lets buffered console output reach stdout
    /// (bounded: a stdout nobody reads is not waited for), and returns
    /// the bytes dropped because stdout did not keep up.
    pub fn drain_output(&self) -> u64 {
        match &self.console {
            Some(c) => {
                c.drain();
                c.dropped()
            }
            None => 0,
        }
    }

    pub fn state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Takes a saved state; the UART keeps its interrupt line and output.
    pub fn restore(&mut self, s: &SerialState) -> Result<(), String> {
        // Checked here, so from_state cannot fail after taking the writer.
        if s.in_buffer.len() > FIFO_SIZE {
            return Err(format!(
                "serial: {} bytes in the receive FIFO (at most {})",
                s.in_buffer.len(),
                FIFO_SIZE
            ));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let irq = self
            .uart
            .interrupt_evt()
            .try_clone()
            .map_err(|e| e.to_string())?;
        // from_state takes the writer by value: swap a sink in meanwhile.
        let out = std::mem::replace(self.uart.writer_mut(), Box::new(io::sink()));
        match Serial::from_state(&state, irq, self.drained.clone(), out) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(format!("serial: {e:?}")),
        }
    }

    /// Offers host input to the guest; returns how many bytes fit in the
    /// receive FIFO. The rest must wait for [`Self::drained_event`].
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Readable when the guest has emptied the receive FIFO.
    pub fn drained_event(&self) -> &EventFd {
        &self.drained.0
    }
}

impl Drop for SerialConsole {
    fn drop(&mut self) {
        if let Some(c) = &self.console {
            c.close();
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if self.uart.write(offset, value).is_err() {
                self.lost_bytes += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer the test can look into.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;

    #[test]
    fn output_reaches_the_writer_and_raises_thre_interrupt() {
        let out = Shared::default();
        let irq = IrqLine::new().unwrap();
        let probe = irq.eventfd().unwrap().try_clone().unwrap();
        let mut s = SerialConsole::new(irq, SerialOutput::Writer(Box::new(out.clone()))).unwrap();
        s.write(IER, &[0x02]); // THR-empty interrupt on
        assert_eq!(probe.read().unwrap(), 1, "enabling fires at once");
        for b in b"hi\n" {
            // The driver acknowledges each interrupt by reading IIR.
            let mut iir = [0u8];
            s.read(IIR, &mut iir);
            s.write(THR, &[*b]);
            assert_eq!(probe.read().unwrap(), 1, "no THRE interrupt");
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "transmitter reports empty");
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_drain_is_signalled() {
        let mut s = SerialConsole::new(IrqLine::new().unwrap(), SerialOutput::Sink).unwrap();
        let big = vec![b'a'; 1000];
        let taken = s.enqueue_input(&big);
        assert!(taken > 0 && taken < big.len(), "took {taken}");
        assert_eq!(s.enqueue_input(&big), 0, "a full FIFO takes nothing");
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        for _ in 0..taken {
            let mut b = [0u8];
            s.read(THR, &mut b);
            assert_eq!(b[0], b'a');
        }
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 0);
        assert_eq!(s.drained_event().read().unwrap(), 1);
    }

    #[test]
    fn wide_and_out_of_range_accesses_are_harmless() {
        let mut s = SerialConsole::new(IrqLine::new().unwrap(), SerialOutput::Sink).unwrap();
        let mut wide = [0xaa; 4];
        s.read(LSR, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        s.write(0x1_0000, &[1]);
        s.write(THR, &[]);
        s.read(THR, &mut []);
    }
}
