//! Build logs as people read them in a terminal: ANSI colour sequences (SGR) become runs of text
//! with CSS classes, and every other escape sequence (cursor moves, titles, OSC 8 hyperlinks,
//! device controls) is dropped, its text kept as plain text.
//!
//! Parsing is `anstyle-parse`'s (the VT state machine terminals use); this module only keeps
//! the current style and cuts the text into [`Span`]s. It produces no markup: the templates escape
//! every span's text, and the page's script sets it with `textContent`. Styles are classes, never
//! inline styles (the Content-Security-Policy forbids them): `ansi-b` bold, `ansi-d` dim, `ansi-i`
//! italic, `ansi-u` underline, `ansi-s` struck through, `ansi-fg-N` / `ansi-bg-N` a colour of the
//! 256-colour palette (24-bit colours take the nearest one), `ansi-fg-inv` / `ansi-bg-inv` the
//! log's own background and ink swapped by SGR 7. [`palette_css`] is the stylesheet for them.

use std::fmt::Write as _;

use anstyle_parse::{DefaultCharAccumulator, Params, Parser, Perform};
use serde::Serialize;

/// The colours of the first 16 palette entries on the log's dark background: black, red,
/// green, yellow, blue, magenta, cyan, white, then their bright forms.
pub const BASE_COLOURS: [&str; 16] = [
    "#6e7681", "#ff7b72", "#3fb950", "#d29922", "#58a6ff", "#bc8cff", "#39c5cf", "#b1bac4", "#8b949e", "#ffa198",
    "#56d364", "#e3b341", "#79c0ff", "#d2a8ff", "#56d4dd", "#ffffff",
];

/// The channel values of the 6×6×6 colour cube (entries 16–231).
const CUBE_LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];

/// A run of text in one style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    pub text: String,
    /// Space-separated classes; empty for the log's plain style.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub class: String,
}

/// A colour as SGR names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Default,
    Palette(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    fg: Colour,
    bg: Colour,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    inverse: bool,
}

impl Default for Style {
    fn default() -> Style {
        Style {
            fg: Colour::Default,
            bg: Colour::Default,
            bold: false,
            dim: false,
            italic: false,
            underline: false,
            strike: false,
            inverse: false,
        }
    }
}

impl Style {
    fn class(&self) -> String {
        let mut class = String::new();
        let mut add = |name: &str| {
            if !class.is_empty() {
                class.push(' ');
            }
            class.push_str(name);
        };
        let (fg, bg) = if self.inverse { (self.bg, self.fg) } else { (self.fg, self.bg) };
        match fg {
            Colour::Palette(n) => add(&format!("ansi-fg-{n}")),
            Colour::Default if self.inverse => add("ansi-fg-inv"),
            Colour::Default => {}
        }
        match bg {
            Colour::Palette(n) => add(&format!("ansi-bg-{n}")),
            Colour::Default if self.inverse => add("ansi-bg-inv"),
            Colour::Default => {}
        }
        for (on, name) in [
            (self.bold, "ansi-b"),
            (self.dim, "ansi-d"),
            (self.italic, "ansi-i"),
            (self.underline, "ansi-u"),
            (self.strike, "ansi-s"),
        ] {
            if on {
                add(name);
            }
        }
        class
    }

    /// Apply one SGR sequence's parameters.
    fn apply(&mut self, params: &Params) {
        // Parameters arrive one per `;`; a `:`-separated group (`38:2::255:0:0`) is one entry.
        let mut values = params.iter();
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        while let Some(param) = values.next() {
            let code = param.first().copied().unwrap_or(0);
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                7 => self.inverse = true,
                9 => self.strike = true,
                21 | 22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                27 => self.inverse = false,
                29 => self.strike = false,
                30..=37 => self.fg = Colour::Palette((code - 30) as u8),
                39 => self.fg = Colour::Default,
                40..=47 => self.bg = Colour::Palette((code - 40) as u8),
                49 => self.bg = Colour::Default,
                90..=97 => self.fg = Colour::Palette((code - 90 + 8) as u8),
                100..=107 => self.bg = Colour::Palette((code - 100 + 8) as u8),
                38 | 48 => {
                    let colour = if param.len() > 1 {
                        extended_colour(&param[1..])
                    } else {
                        // `38;5;N` or `38;2;R;G;B`: the rest comes as separate parameters.
                        let kind = values.next().and_then(|p| p.first().copied());
                        match kind {
                            Some(5) => values.next().and_then(|p| p.first().copied()).and_then(palette_index),
                            Some(2) => {
                                let rgb: Vec<u16> =
                                    values.by_ref().take(3).filter_map(|p| p.first().copied()).collect();
                                (rgb.len() == 3).then(|| nearest_palette(rgb[0], rgb[1], rgb[2]))
                            }
                            _ => None,
                        }
                    };
                    if let Some(colour) = colour {
                        if code == 38 {
                            self.fg = Colour::Palette(colour);
                        } else {
                            self.bg = Colour::Palette(colour);
                        }
                    }
                }
                // Blink, fonts, overline and the rest have no class: ignored.
                _ => {}
            }
        }
    }
}

/// `5:N` or `2:R:G:B` (also `2::R:G:B`, with an empty colour-space id) of a `:`-separated SGR 38/48.
fn extended_colour(rest: &[u16]) -> Option<u8> {
    match rest {
        [5, n, ..] => palette_index(*n),
        [2, _, r, g, b] | [2, r, g, b] => Some(nearest_palette(*r, *g, *b)),
        _ => None,
    }
}

fn palette_index(n: u16) -> Option<u8> {
    u8::try_from(n).ok()
}

/// The 256-colour palette entry nearest to a 24-bit colour: the nearer of the closest cube colour
/// and the closest grey of the ramp (232–255).
pub fn nearest_palette(r: u16, g: u16, b: u16) -> u8 {
    let [r, g, b] = [r, g, b].map(|c| c.min(255) as i32);
    let level = |c: i32| -> usize {
        CUBE_LEVELS.iter().enumerate().min_by_key(|(_, &l)| (l as i32 - c).abs()).map(|(i, _)| i).unwrap_or(0)
    };
    let (ri, gi, bi) = (level(r), level(g), level(b));
    let cube = (CUBE_LEVELS[ri] as i32, CUBE_LEVELS[gi] as i32, CUBE_LEVELS[bi] as i32);
    let cube_index = 16 + 36 * ri + 6 * gi + bi;
    let average = (r + g + b) / 3;
    let grey_step = ((average - 8).max(0) / 10).min(23);
    let grey = 8 + 10 * grey_step;
    let distance = |(cr, cg, cb): (i32, i32, i32)| (cr - r).pow(2) + (cg - g).pow(2) + (cb - b).pow(2);
    if distance((grey, grey, grey)) < distance(cube) {
        (232 + grey_step) as u8
    } else {
        cube_index as u8
    }
}

/// The `#rrggbb` of palette entry `n`.
pub fn palette_colour(n: u8) -> String {
    match n {
        0..=15 => BASE_COLOURS[n as usize].to_string(),
        16..=231 => {
            let i = n as usize - 16;
            let (r, g, b) = (CUBE_LEVELS[i / 36], CUBE_LEVELS[(i / 6) % 6], CUBE_LEVELS[i % 6]);
            format!("#{r:02x}{g:02x}{b:02x}")
        }
        232..=255 => {
            let v = 8 + 10 * (n - 232);
            format!("#{v:02x}{v:02x}{v:02x}")
        }
    }
}

/// The stylesheet of the classes [`render`] uses, served beside the dashboard's own.
pub fn palette_css() -> String {
    let mut css = String::from(
        "/* ANSI colours and styles of build logs: generated by gantry_web::ansi::palette_css. */\n\
         .ansi-b { font-weight: 700; }\n.ansi-d { opacity: 0.7; }\n.ansi-i { font-style: italic; }\n\
         .ansi-u { text-decoration: underline; }\n.ansi-s { text-decoration: line-through; }\n\
         .ansi-u.ansi-s { text-decoration: underline line-through; }\n\
         .ansi-fg-inv { color: var(--log-bg); }\n.ansi-bg-inv { background: var(--log-ink); }\n",
    );
    for n in 0..=255u8 {
        let colour = palette_colour(n);
        let _ = writeln!(css, ".ansi-fg-{n} {{ color: {colour}; }}\n.ansi-bg-{n} {{ background: {colour}; }}");
    }
    css
}

/// Whether `text` shows as it is: no escape and no control character but tab.
pub fn is_plain(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\t')
}

/// Collects the printed text into spans while the parser reads the line.
struct Collector {
    style: Style,
    spans: Vec<Span>,
    /// The text printed in `style` since the last change.
    text: String,
    /// The class of `text`, computed when the style last changed.
    class: String,
}

impl Collector {
    fn flush(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.text);
        match self.spans.last_mut() {
            Some(last) if last.class == self.class => last.text.push_str(&text),
            _ => self.spans.push(Span { text, class: self.class.clone() }),
        }
    }
}

impl Perform for Collector {
    fn print(&mut self, c: char) {
        self.text.push(c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\t' => self.text.push('\t'),
            // Other C0 controls are shown as their Unicode control pictures (␀, ␇, ␈), so binary
            // output stays visible and harmless.
            0..=0x1f => self.text.push(char::from_u32(0x2400 + u32::from(byte)).unwrap_or('\u{fffd}')),
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], ignore: bool, action: u8) {
        // Only SGR (`CSI … m`, without intermediates or a private marker) means anything here.
        if action != b'm' || !intermediates.is_empty() || ignore {
            return;
        }
        let before = self.style;
        self.style.apply(params);
        if self.style != before {
            self.flush();
            self.class = self.style.class();
        }
    }
}

/// `text` (one log line) as styled spans, with every escape sequence but SGR dropped.
pub fn render(text: &str) -> Vec<Span> {
    if is_plain(text) {
        return if text.is_empty() { Vec::new() } else { vec![Span { text: text.to_string(), class: String::new() }] };
    }
    let mut parser = Parser::<DefaultCharAccumulator>::new();
    let mut collector =
        Collector { style: Style::default(), spans: Vec::new(), text: String::new(), class: String::new() };
    for byte in text.bytes() {
        parser.advance(&mut collector, byte);
    }
    collector.flush();
    collector.spans
}

/// `text` without any escape sequence: what [`render`] shows, unstyled.
pub fn plain_text(text: &str) -> String {
    render(text).into_iter().map(|span| span.text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<(String, String)> {
        render(text).into_iter().map(|s| (s.class, s.text)).collect()
    }

    fn span(class: &str, text: &str) -> (String, String) {
        (class.to_string(), text.to_string())
    }

    #[test]
    fn plain_text_is_one_unstyled_span() {
        assert_eq!(spans("hello\tworld"), [span("", "hello\tworld")]);
        assert!(render("").is_empty());
        assert!(is_plain("tab\tis plain") && !is_plain("esc \u{1b}[0m"));
    }

    #[test]
    fn colours_bold_and_reset_become_classes() {
        assert_eq!(
            spans("\u{1b}[31mred\u{1b}[0m plain \u{1b}[1;32mbold green\u{1b}[22m green\u{1b}[m"),
            [
                span("ansi-fg-1", "red"),
                span("", " plain "),
                span("ansi-fg-2 ansi-b", "bold green"),
                span("ansi-fg-2", " green")
            ]
        );
        assert_eq!(spans("\u{1b}[91;44mx\u{1b}[39;49my"), [span("ansi-fg-9 ansi-bg-4", "x"), span("", "y")]);
        assert_eq!(
            spans("\u{1b}[2;3;4;9ma\u{1b}[23;24;29mb"),
            [span("ansi-d ansi-i ansi-u ansi-s", "a"), span("ansi-d", "b")]
        );
    }

    #[test]
    fn palette_and_truecolour_take_palette_classes() {
        assert_eq!(spans("\u{1b}[38;5;196mx"), [span("ansi-fg-196", "x")]);
        assert_eq!(spans("\u{1b}[48;5;22mx"), [span("ansi-bg-22", "x")]);
        assert_eq!(spans("\u{1b}[38:5:208mx"), [span("ansi-fg-208", "x")]);
        // Pure red is the cube's red; a dark grey is on the grey ramp.
        assert_eq!(spans("\u{1b}[38;2;255;0;0mx"), [span("ansi-fg-196", "x")]);
        assert_eq!(spans("\u{1b}[38:2::255:0:0mx"), [span("ansi-fg-196", "x")]);
        assert_eq!(spans("\u{1b}[48;2;40;40;40mx"), [span("ansi-bg-235", "x")]);
        // Parameters after a truecolour sequence still apply.
        assert_eq!(spans("\u{1b}[38;2;0;0;255;1mx"), [span("ansi-fg-21 ansi-b", "x")]);
        assert_eq!(palette_colour(196), "#ff0000");
        assert_eq!(palette_colour(232), "#080808");
        assert_eq!(palette_colour(1), BASE_COLOURS[1]);
    }

    #[test]
    fn inverse_swaps_the_colours() {
        assert_eq!(spans("\u{1b}[7mx\u{1b}[27my"), [span("ansi-fg-inv ansi-bg-inv", "x"), span("", "y")]);
        assert_eq!(spans("\u{1b}[31;7mx"), [span("ansi-fg-inv ansi-bg-1", "x")]);
    }

    #[test]
    fn every_other_escape_is_dropped_and_hyperlinks_stay_text() {
        // OSC 8: the link's text stays, the URL and the link go.
        let link = "see \u{1b}]8;;https://evil.example/\u{1b}\\the docs\u{1b}]8;;\u{1b}\\ now";
        assert_eq!(spans(link), [span("", "see the docs now")]);
        assert_eq!(plain_text("\u{1b}]8;;javascript:alert(1)\u{7}click\u{1b}]8;;\u{7}"), "click");
        // Cursor moves, erase, a window title, a private mode, a DCS string.
        assert_eq!(
            plain_text("\u{1b}[2K\u{1b}[1Gprogress\u{1b}]0;title\u{7} 50%\u{1b}[?25l\u{1b}P1$r\u{1b}\\ done"),
            "progress 50% done"
        );
        // A colour with a private marker is not SGR.
        assert_eq!(spans("\u{1b}[>4;2mx"), [span("", "x")]);
    }

    #[test]
    fn control_characters_are_shown_and_markup_is_left_to_the_escaper() {
        assert_eq!(plain_text("a\u{0}b\u{7}c\td"), "a\u{2400}b\u{2407}c\td");
        let hostile = "\u{1b}[31m<script>alert(1)</script>";
        assert_eq!(spans(hostile), [span("ansi-fg-1", "<script>alert(1)</script>")]);
    }

    #[test]
    fn the_palette_stylesheet_has_every_class() {
        let css = palette_css();
        for class in [".ansi-fg-0 ", ".ansi-bg-255 ", ".ansi-b ", ".ansi-fg-inv "] {
            assert!(css.contains(class), "{class} missing");
        }
        assert_eq!(css.matches(".ansi-fg-").count(), 256 + 1);
    }
}
