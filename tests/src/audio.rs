//! Tones in, spectrum out: WAV writing and the measurements the call tests assert on.

use std::path::Path;

/// Sample rate of every WAV here.
pub const RATE: u32 = 48_000;
/// Analysis block: 20 ms.
pub const BLOCK: usize = 960;

/// Writes a mono 16-bit sine tone.
pub fn write_tone(path: &Path, hz: f64, seconds: f64, amplitude: f64) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    let n = (seconds * f64::from(RATE)).round() as usize;
    for i in 0..n {
        let t = i as f64 / f64::from(RATE);
        let v = amplitude * (2.0 * std::f64::consts::PI * hz * t).sin();
        w.write_sample((v * f64::from(i16::MAX)) as i16)?;
    }
    w.finalize()?;
    Ok(())
}

/// Reads a mono 16-bit WAV as samples in -1..1.
pub fn read_mono(path: &Path) -> anyhow::Result<Vec<f64>> {
    let mut r = hound::WavReader::open(path)?;
    anyhow::ensure!(r.spec().channels == 1, "expected mono");
    r.samples::<i16>()
        .map(|s| Ok(f64::from(s?) / f64::from(i16::MAX)))
        .collect()
}

/// Power of frequency `hz` in `x` (Goertzel over a Hann window, so a tone 200 Hz away leaks
/// far below -60 dB even in a 20 ms block), normalised so a sine of amplitude `A` gives `A²/16`.
pub fn tone_power(x: &[f64], hz: f64) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(RATE);
    let c = 2.0 * w.cos();
    let step = 2.0 * std::f64::consts::PI / (x.len() - 1) as f64;
    let (mut s1, mut s2) = (0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let hann = 0.5 - 0.5 * (step * i as f64).cos();
        let s0 = v * hann + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - c * s1 * s2;
    p / (x.len() as f64 * x.len() as f64)
}

/// What a recording holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    /// Frequency with the most power between 100 and 2000 Hz (1 Hz steps) over the blocks where
    /// `expected` dominates.
    pub peak_hz: f64,
    /// Time during which `expected` dominated the recording, in seconds.
    pub seconds: f64,
    /// Power of `unexpected` relative to `expected` over the whole recording, in dB.
    pub leakage_db: f64,
}

/// Measures how long and how purely `expected` is heard in `x`, and how much of `unexpected`.
pub fn analyse(x: &[f64], expected: f64, unexpected: f64) -> Heard {
    let mut tone_blocks = Vec::new();
    let (mut p_exp, mut p_unexp) = (0.0, 0.0);
    for block in x.chunks_exact(BLOCK) {
        let e = tone_power(block, expected);
        let u = tone_power(block, unexpected);
        p_exp += e;
        p_unexp += u;
        // A block "has" the tone when it carries at least a -30 dBFS sine at that frequency.
        if e > 1e-3 / 16.0 && e > 10.0 * u {
            tone_blocks.extend_from_slice(block);
        }
    }
    let seconds = tone_blocks.len() as f64 / f64::from(RATE);
    let window = &tone_blocks[..tone_blocks.len().min(RATE as usize)];
    let peak_hz = (100..=2000)
        .map(f64::from)
        .max_by(|a, b| tone_power(window, *a).total_cmp(&tone_power(window, *b)))
        .unwrap_or(0.0);
    let leakage_db = 10.0 * (p_unexp.max(1e-20) / p_exp.max(1e-20)).log10();
    Heard {
        peak_hz,
        seconds,
        leakage_db,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, seconds: f64, amp: f64) -> Vec<f64> {
        (0..(seconds * f64::from(RATE)) as usize)
            .map(|i| amp * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(RATE)).sin())
            .collect()
    }

    #[test]
    fn analysis_finds_the_tone_its_length_and_the_leakage() {
        let mut x = vec![0.0; RATE as usize / 2];
        x.extend(tone(660.0, 2.0, 0.5));
        x.extend(vec![0.0; RATE as usize]);
        let h = analyse(&x, 660.0, 440.0);
        assert!((h.peak_hz - 660.0).abs() <= 1.0, "{h:?}");
        assert!((h.seconds - 2.0).abs() < 0.03, "{h:?}");
        assert!(h.leakage_db < -40.0, "{h:?}");
        let wrong = analyse(&x, 440.0, 660.0);
        assert!(wrong.seconds < 0.05, "{wrong:?}");
        assert!(wrong.leakage_db > 40.0, "{wrong:?}");
    }

    #[test]
    fn tones_round_trip_through_wav_files() {
        let dir = std::env::temp_dir().join(format!("convoy-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.wav");
        write_tone(&p, 440.0, 0.5, 0.5).unwrap();
        let x = read_mono(&p).unwrap();
        assert_eq!(x.len(), 24_000);
        let h = analyse(&x, 440.0, 660.0);
        assert!(
            (h.peak_hz - 440.0).abs() <= 1.0 && (h.seconds - 0.5).abs() < 0.03,
            "{h:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
