//! A music track from the bytes of an uploaded file to 20 ms Opus frames, once per track.
//!
//! The file is demuxed and decoded with symphonia (WAV, FLAC, MP3, Ogg Vorbis, AAC in MP4, …),
//! Opus streams (Ogg, WebM) with libopus; the audio is brought to stereo, resampled to 48 kHz
//! (rubato) and encoded with libopus as stereo music, 20 ms a frame. A room then only paces
//! frames out: no codec runs on a media core, and a seek is a frame index.
//!
//! Pure: bytes in, frames out; no file, socket or clock. The bytes come from a user, so every
//! failure is an error and the caller also catches a panic of a decoder (`transcode_guarded`).

use std::sync::Arc;
use symphonia::core::audio::{SampleBuffer, SignalSpec};
use symphonia::core::codecs::{CODEC_TYPE_NULL, CODEC_TYPE_OPUS, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Samples per channel in one frame: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Milliseconds in one frame.
pub const FRAME_MS: u64 = 20;
/// Sample rate of every encoded track.
pub const RATE: u32 = 48_000;
/// Bits per second of the encoded music (stereo).
pub const BITRATE: i32 = 96_000;
/// The longest track taken (30 minutes); longer files are refused rather than cut.
pub const MAX_DURATION_MS: u64 = 30 * 60 * 1000;
/// Largest Opus frame produced (libopus keeps to it).
const MAX_FRAME_BYTES: usize = 1275;
/// Rubato's input block.
const RESAMPLE_CHUNK: usize = 1024;

/// A track ready to be sent: its 20 ms stereo Opus frames.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub frames: Vec<Arc<[u8]>>,
}

impl Encoded {
    /// Playing time.
    pub fn duration_ms(&self) -> u64 {
        self.frames.len() as u64 * FRAME_MS
    }
}

/// Why a file could not be made into a track. The message is safe to show its uploader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    #[error("the file is not audio in a format the node reads ({0})")]
    Unsupported(String),
    #[error("the audio could not be decoded: {0}")]
    Malformed(String),
    #[error("the track has no audio")]
    Empty,
    #[error("the track is longer than {} minutes", MAX_DURATION_MS / 60_000)]
    TooLong,
    #[error("the audio could not be encoded: {0}")]
    Encoder(String),
}

/// Decodes `bytes` (an audio file; `extension` helps to tell its format) and encodes it as
/// 20 ms stereo Opus frames at 48 kHz.
pub fn transcode(bytes: Vec<u8>, extension: Option<&str>) -> Result<Encoded, TranscodeError> {
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let source = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| TranscodeError::Unsupported(e.to_string()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or(TranscodeError::Empty)?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let rate = params.sample_rate.unwrap_or(RATE);
    if !(8_000..=192_000).contains(&rate) {
        return Err(TranscodeError::Unsupported(format!(
            "a sample rate of {rate} Hz"
        )));
    }
    let mut out = Pipeline::new(rate)?;
    if params.codec == CODEC_TYPE_OPUS {
        // Symphonia demuxes Opus but does not decode it: libopus does.
        let channels = params.channels.map_or(2, |c| c.count());
        let opus_channels = match channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => {
                return Err(TranscodeError::Unsupported(format!(
                    "Opus with {n} channels"
                )));
            }
        };
        let mut decoder = opus::Decoder::new(RATE, opus_channels)
            .map_err(|e| TranscodeError::Malformed(e.to_string()))?;
        let mut skip = params.delay.unwrap_or(0) as usize;
        // 120 ms is the longest Opus packet.
        let mut pcm = vec![0f32; 5760 * channels];
        while let Some(packet) = next_packet(&mut *format, track_id)? {
            let n = match decoder.decode_float(&packet, &mut pcm, false) {
                Ok(n) => n,
                // A damaged packet is skipped, as a player would.
                Err(_) => continue,
            };
            let from = skip.min(n);
            skip -= from;
            out.push(&pcm[from * channels..n * channels], channels)?;
        }
    } else {
        let mut decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| TranscodeError::Unsupported(e.to_string()))?;
        let mut samples: Option<(SampleBuffer<f32>, SignalSpec)> = None;
        loop {
            let packet = match format.next_packet() {
                Ok(p) => p,
                Err(e) if end_of_stream(&e) => break,
                Err(e) => return Err(TranscodeError::Malformed(e.to_string())),
            };
            if packet.track_id() != track_id {
                continue;
            }
            let decoded = match decoder.decode(&packet) {
                Ok(d) => d,
                Err(SymphoniaError::DecodeError(_)) => continue,
                Err(e) => return Err(TranscodeError::Malformed(e.to_string())),
            };
            let spec = *decoded.spec();
            let capacity = decoded.capacity() as u64;
            let reuse = samples
                .as_ref()
                .is_some_and(|(b, s)| *s == spec && b.capacity() as u64 >= capacity);
            if !reuse {
                samples = Some((SampleBuffer::new(capacity, spec), spec));
            }
            let (buf, _) = samples.as_mut().expect("just set");
            buf.copy_interleaved_ref(decoded);
            let channels = spec.channels.count();
            if channels == 0 {
                return Err(TranscodeError::Malformed("a packet of no channel".into()));
            }
            if spec.rate != rate {
                return Err(TranscodeError::Unsupported(
                    "a sample rate that changes within the file".into(),
                ));
            }
            out.push(buf.samples(), channels)?;
        }
    }
    out.finish()
}

/// Runs [`transcode`], turning a panic inside a decoder into an error: the bytes are a
/// user's, and no file may take the node down.
pub fn transcode_guarded(
    bytes: Vec<u8>,
    extension: Option<&str>,
) -> Result<Encoded, TranscodeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| transcode(bytes, extension)))
        .unwrap_or_else(|_| Err(TranscodeError::Malformed("the decoder gave up".into())))
}

fn end_of_stream(e: &SymphoniaError) -> bool {
    match e {
        SymphoniaError::IoError(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        // A chained stream's next part: this track is over.
        SymphoniaError::ResetRequired => true,
        _ => false,
    }
}

/// The next packet of `track`, `None` at the end.
fn next_packet(
    format: &mut dyn symphonia::core::formats::FormatReader,
    track: u32,
) -> Result<Option<Box<[u8]>>, TranscodeError> {
    loop {
        match format.next_packet() {
            Ok(p) if p.track_id() == track => return Ok(Some(p.data)),
            Ok(_) => {}
            Err(e) if end_of_stream(&e) => return Ok(None),
            Err(e) => return Err(TranscodeError::Malformed(e.to_string())),
        }
    }
}

/// Interleaved audio of any channel count and rate in, stereo 48 kHz Opus frames out.
struct Pipeline {
    resampler: Option<rubato::FftFixedIn<f32>>,
    /// Planar stereo waiting for the resampler.
    pending: [Vec<f32>; 2],
    /// Interleaved stereo at 48 kHz waiting to fill a frame.
    ready: Vec<f32>,
    encoder: opus::Encoder,
    frames: Vec<Arc<[u8]>>,
    scratch: Vec<u8>,
    /// Samples (per channel) at 48 kHz taken so far, to refuse overlong tracks early.
    taken: u64,
    /// Samples still to drop at 48 kHz: the resampler's delay.
    delay: usize,
    /// Input rate, and samples (per channel) taken in and put out at 48 kHz: the resampler's
    /// last block is padded, and what it adds past the input's length is cut.
    rate: u32,
    samples_in: u64,
    samples_out: u64,
}

impl Pipeline {
    fn new(rate: u32) -> Result<Self, TranscodeError> {
        let resampler = if rate == RATE {
            None
        } else {
            Some(
                rubato::FftFixedIn::new(rate as usize, RATE as usize, RESAMPLE_CHUNK, 2, 2)
                    .map_err(|e| TranscodeError::Unsupported(e.to_string()))?,
            )
        };
        let delay = resampler
            .as_ref()
            .map_or(0, rubato::Resampler::<f32>::output_delay);
        let mut encoder =
            opus::Encoder::new(RATE, opus::Channels::Stereo, opus::Application::Audio)
                .map_err(|e| TranscodeError::Encoder(e.to_string()))?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(BITRATE))
            .map_err(|e| TranscodeError::Encoder(e.to_string()))?;
        Ok(Self {
            resampler,
            pending: [Vec::new(), Vec::new()],
            ready: Vec::new(),
            encoder,
            frames: Vec::new(),
            scratch: vec![0; MAX_FRAME_BYTES],
            taken: 0,
            delay,
            rate,
            samples_in: 0,
            samples_out: 0,
        })
    }

    /// Takes interleaved samples of `channels` channels: one and two as they are, more by
    /// their first two (front left and right in every standard layout).
    fn push(&mut self, interleaved: &[f32], channels: usize) -> Result<(), TranscodeError> {
        let frames = interleaved.len() / channels;
        self.samples_in += frames as u64;
        for k in 0..frames {
            let l = interleaved[k * channels];
            let r = if channels == 1 {
                l
            } else {
                interleaved[k * channels + 1]
            };
            // NaN or out-of-range samples from a damaged file must not reach the encoder.
            let (l, r) = (clean(l), clean(r));
            if self.resampler.is_some() {
                self.pending[0].push(l);
                self.pending[1].push(r);
            } else {
                self.ready.push(l);
                self.ready.push(r);
            }
        }
        self.resample(false)?;
        self.encode(false)
    }

    fn resample(&mut self, last: bool) -> Result<(), TranscodeError> {
        let Some(resampler) = self.resampler.as_mut() else {
            return Ok(());
        };
        use rubato::Resampler;
        let expected = self.samples_in * u64::from(RATE) / u64::from(self.rate);
        let mut flushed = false;
        loop {
            let need = resampler.input_frames_next();
            let out = if self.pending[0].len() >= need {
                let out = resampler
                    .process(&[&self.pending[0][..need], &self.pending[1][..need]], None)
                    .map_err(|e| TranscodeError::Encoder(e.to_string()))?;
                self.pending[0].drain(..need);
                self.pending[1].drain(..need);
                out
            } else if last && !self.pending[0].is_empty() {
                let out = resampler
                    .process_partial(Some(&[&self.pending[0][..], &self.pending[1][..]]), None)
                    .map_err(|e| TranscodeError::Encoder(e.to_string()))?;
                self.pending[0].clear();
                self.pending[1].clear();
                out
            } else if last && self.samples_out < expected && !flushed {
                // What the filter still holds (its delay): one more block of nothing pushes it out.
                flushed = true;
                resampler
                    .process_partial(None::<&[&[f32]]>, None)
                    .map_err(|e| TranscodeError::Encoder(e.to_string()))?
            } else {
                return Ok(());
            };
            for (&l, &r) in out[0].iter().zip(&out[1]) {
                if self.delay > 0 {
                    self.delay -= 1;
                    continue;
                }
                if last && self.samples_out >= expected {
                    break;
                }
                self.samples_out += 1;
                self.ready.push(l);
                self.ready.push(r);
            }
        }
    }

    fn encode(&mut self, last: bool) -> Result<(), TranscodeError> {
        let mut ready = std::mem::take(&mut self.ready);
        let whole = ready.len() / (2 * FRAME_SAMPLES);
        for frame in ready.chunks_exact(2 * FRAME_SAMPLES) {
            self.emit(frame)?;
        }
        ready.drain(..whole * 2 * FRAME_SAMPLES);
        self.ready = ready;
        if last && !self.ready.is_empty() {
            // The tail, padded with silence to a whole frame.
            let mut frame = std::mem::take(&mut self.ready);
            frame.resize(2 * FRAME_SAMPLES, 0.0);
            self.emit(&frame)?;
        }
        Ok(())
    }

    fn emit(&mut self, frame: &[f32]) -> Result<(), TranscodeError> {
        self.taken += FRAME_SAMPLES as u64;
        if self.taken * 1000 / u64::from(RATE) > MAX_DURATION_MS {
            return Err(TranscodeError::TooLong);
        }
        let n = self
            .encoder
            .encode_float(frame, &mut self.scratch)
            .map_err(|e| TranscodeError::Encoder(e.to_string()))?;
        self.frames.push(Arc::from(&self.scratch[..n]));
        Ok(())
    }

    fn finish(mut self) -> Result<Encoded, TranscodeError> {
        self.resample(true)?;
        self.encode(true)?;
        if self.frames.is_empty() {
            return Err(TranscodeError::Empty);
        }
        Ok(Encoded {
            frames: self.frames,
        })
    }
}

fn clean(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit WAV of `seconds` at `rate`: 440 Hz on the left, 660 Hz on the right (or 440 Hz
    /// alone in mono).
    fn wav(rate: u32, channels: u16, seconds: f64) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        let n = (seconds * f64::from(rate)) as usize;
        for i in 0..n {
            let t = i as f64 / f64::from(rate);
            for hz in [440.0, 660.0].iter().take(channels as usize) {
                let v = 0.5 * (std::f64::consts::TAU * hz * t).sin();
                w.write_sample((v * f64::from(i16::MAX)) as i16).unwrap();
            }
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    /// Decodes the frames back to interleaved stereo at 48 kHz.
    fn decode(e: &Encoded) -> Vec<f32> {
        let mut d = opus::Decoder::new(RATE, opus::Channels::Stereo).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0f32; 2 * FRAME_SAMPLES];
        for f in &e.frames {
            let n = d.decode_float(f, &mut buf, false).unwrap();
            assert_eq!(n, FRAME_SAMPLES, "every frame is 20 ms");
            pcm.extend_from_slice(&buf[..2 * n]);
        }
        pcm
    }

    /// The strongest frequency (1 Hz steps, 100..1000 Hz) of one channel, by Goertzel.
    fn peak(x: &[f32]) -> f64 {
        let power = |hz: f64| {
            let w = std::f64::consts::TAU * hz / f64::from(RATE);
            let c = 2.0 * w.cos();
            let (mut s1, mut s2) = (0.0, 0.0);
            for &v in x {
                let s0 = f64::from(v) + c * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            s1 * s1 + s2 * s2 - c * s1 * s2
        };
        (100..1000)
            .map(f64::from)
            .max_by(|a, b| power(*a).total_cmp(&power(*b)))
            .unwrap()
    }

    fn channel(pcm: &[f32], c: usize) -> Vec<f32> {
        pcm.chunks_exact(2).map(|s| s[c]).collect()
    }

    #[test]
    fn a_stereo_wav_at_44_1_khz_keeps_its_length_and_both_channels_tones() {
        let e = transcode(wav(44_100, 2, 2.0), Some("wav")).unwrap();
        assert_eq!(e.frames.len(), 100, "2 s is 100 frames");
        assert_eq!(e.duration_ms(), 2_000);
        let pcm = decode(&e);
        // A second from the middle, past the codec's start-up.
        let (l, r) = (channel(&pcm, 0), channel(&pcm, 1));
        let mid = 24_000..72_000;
        assert_eq!(peak(&l[mid.clone()]), 440.0);
        assert_eq!(peak(&r[mid.clone()]), 660.0);
        let rms = (l[mid].iter().map(|v| v * v).sum::<f32>() / 48_000.0).sqrt();
        assert!((rms - 0.354).abs() < 0.05, "level kept: rms {rms}");
        let bytes: usize = e.frames.iter().map(|f| f.len()).sum();
        let kbps = bytes as f64 * 8.0 / 2.0 / 1000.0;
        assert!(
            (60.0..130.0).contains(&kbps),
            "about {BITRATE} b/s: {kbps} kb/s"
        );
    }

    #[test]
    fn a_mono_wav_at_48_khz_plays_on_both_sides_and_a_short_tail_is_padded() {
        let e = transcode(wav(48_000, 1, 0.51), None).unwrap();
        assert_eq!(
            e.frames.len(),
            26,
            "510 ms is 25.5 frames: the half is padded"
        );
        let pcm = decode(&e);
        let (l, r) = (channel(&pcm, 0), channel(&pcm, 1));
        assert_eq!(peak(&l[4_800..20_000]), 440.0);
        assert_eq!(peak(&r[4_800..20_000]), 440.0);
    }

    #[test]
    fn mp3_flac_aac_opus_and_vorbis_files_decode_to_their_tone_and_length() {
        for (ext, bytes) in [
            ("mp3", &include_bytes!("testdata/tone440.mp3")[..]),
            ("flac", &include_bytes!("testdata/tone440.flac")[..]),
            ("m4a", &include_bytes!("testdata/tone440.m4a")[..]),
            ("ogg", &include_bytes!("testdata/tone440.opus")[..]),
            ("webm", &include_bytes!("testdata/tone440.webm")[..]),
            ("ogg", &include_bytes!("testdata/tone440.ogg")[..]),
        ] {
            let e = transcode(bytes.to_vec(), Some(ext)).unwrap_or_else(|e| panic!("{ext}: {e}"));
            // 500 ms; MP3 and AAC files carry an encoder delay of a frame or two.
            assert!(
                (25..=28).contains(&e.frames.len()),
                "{ext}: {} frames",
                e.frames.len()
            );
            let pcm = decode(&e);
            let (l, r) = (channel(&pcm, 0), channel(&pcm, 1));
            assert_eq!(peak(&l[4_800..19_200]), 440.0, "{ext}");
            assert_eq!(peak(&r[4_800..19_200]), 440.0, "{ext}");
            // Without the hint too: the format is found from the bytes.
            assert!(transcode(bytes.to_vec(), None).is_ok(), "{ext} unhinted");
        }
    }

    #[test]
    fn what_is_not_audio_is_refused_and_never_panics() {
        assert!(matches!(
            transcode(b"certainly not a song".to_vec(), Some("mp3")),
            Err(TranscodeError::Unsupported(_) | TranscodeError::Malformed(_))
        ));
        assert!(transcode(Vec::new(), None).is_err());
        // symphonia's MKV reader panics on this file (found by the fuzz target): an error here.
        let panics = include_bytes!("testdata/mkv-panic.bin").to_vec();
        assert_eq!(
            transcode_guarded(panics, None).map(|e| e.frames.len()),
            Err(TranscodeError::Malformed("the decoder gave up".into()))
        );
        // A WAV cut short decodes what is there; a header alone has no audio.
        let whole = wav(48_000, 2, 1.0);
        let cut = transcode(whole[..whole.len() / 2].to_vec(), Some("wav")).unwrap();
        assert_eq!(cut.frames.len(), 25);
        assert!(transcode(whole[..44].to_vec(), Some("wav")).is_err());
        // Every prefix and a few corruptions of a real file: an answer, never a panic.
        let mut noise = 0x9e37_79b9_u32;
        for cut in (0..200).chain((200..whole.len()).step_by(997)) {
            let mut bytes = whole[..cut].to_vec();
            for _ in 0..3 {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                if !bytes.is_empty() {
                    let at = noise as usize % bytes.len();
                    bytes[at] = (noise >> 8) as u8;
                }
            }
            let _ = transcode_guarded(bytes, Some("wav"));
        }
    }
}
