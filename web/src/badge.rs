//! The status badge of `/badge/{repo}.svg`: a small SVG image of a build's verdict, in the shape
//! READMEs show, rendered from an askama template (so its text is escaped like any page's).
//!
//! Text widths are estimated from the characters (the image's font is the viewer's Verdana or a
//! stand-in), which is what lets the badge fit its words without a font file.

use askama::Template;
use gantry_event::BuildStatus;

use crate::pages::RenderError;

/// Pixels of padding on each side of a badge's two texts.
const PADDING: u32 = 6;

/// A badge: `label | message`, the message on a coloured field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub label: String,
    pub message: String,
    /// The message field's colour, `#rrggbb`.
    pub color: &'static str,
}

impl Badge {
    /// The badge of a build that ended with `status`, or of no build at all.
    pub fn for_status(status: Option<BuildStatus>) -> Badge {
        let (message, color) = match status {
            Some(BuildStatus::Passed) => ("passed", "#2da44e"),
            Some(BuildStatus::Failed) => ("failed", "#cf222e"),
            Some(BuildStatus::Errored) => ("errored", "#8250df"),
            Some(ended @ (BuildStatus::Cancelled | BuildStatus::Interrupted)) => (ended.as_str(), "#6e7781"),
            Some(live) => (live.as_str(), "#bf8700"),
            None => ("no builds", "#6e7781"),
        };
        Badge { label: "build".to_string(), message: message.to_string(), color }
    }

    /// The badge as an SVG document.
    pub fn render(&self) -> Result<String, RenderError> {
        let label_width = text_width(&self.label) + 2 * PADDING;
        let message_width = text_width(&self.message) + 2 * PADDING;
        BadgeTemplate { badge: self, label_width, message_width, width: label_width + message_width }.render()
    }
}

#[derive(Template)]
#[template(path = "badge.svg")]
struct BadgeTemplate<'a> {
    badge: &'a Badge,
    label_width: u32,
    message_width: u32,
    width: u32,
}

impl BadgeTemplate<'_> {
    /// The middle of the label field, in tenths of a pixel (the text is drawn scaled by 0.1).
    fn label_x(&self) -> u32 {
        self.label_width * 5
    }

    fn message_x(&self) -> u32 {
        self.label_width * 10 + self.message_width * 5
    }
}

/// About how wide `text` is in 11px Verdana, in pixels.
fn text_width(text: &str) -> u32 {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | 'j' | '.' | ',' | ':' | '\'' | '|' => 3,
            'f' | 't' | 'r' | ' ' | 'I' => 4,
            'm' | 'w' | 'M' | 'W' => 10,
            c if c.is_ascii_uppercase() => 8,
            _ => 7,
        })
        .sum()
}
