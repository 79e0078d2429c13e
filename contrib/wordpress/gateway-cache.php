<?php
/**
 * Plugin Name: Gateway page cache
 * Description: Tells the gateway's page cache which pages changed. Pages are tagged (X-Cache-Tags: post-ID on a post or page, "lists" on the home page, archives, searches and feeds); when a post is published, updated, unpublished or deleted, or a comment on it appears, changes or is moderated, the response of that request carries X-Cache-Purge with the post's URL (and everything under it: its feed, its comment pages), its tag, and the lists. The gateway strips both headers before the client sees them.
 * Version: 1.0
 *
 * Install: copy this file into wp-content/mu-plugins/ (a must-use plugin needs no activation).
 * Gateway: [sites.NAME.cache] enabled = true. Changes made without an HTTP request through the
 * gateway (WP-CLI, cron run from the command line) send no header: purge with `gateway purge`.
 */

if (!defined('ABSPATH')) {
    exit;
}

final class Gateway_Cache {
    /** @var array<string, true> what this request purges, in order */
    private static $purge = [];

    public static function init(): void {
        add_action('wp', [self::class, 'tag_page']);
        add_action('transition_post_status', [self::class, 'post_status_changed'], 10, 3);
        add_action('deleted_post', [self::class, 'post_changed']);
        add_action('comment_post', [self::class, 'comment_changed']);
        add_action('edit_comment', [self::class, 'comment_changed']);
        add_action('wp_set_comment_status', [self::class, 'comment_changed']);
        add_action('transition_comment_status', [self::class, 'comment_transition'], 10, 3);
    }

    /** The page being served: tag it so a purge by tag finds it. */
    public static function tag_page(): void {
        if (headers_sent() || is_admin()) {
            return;
        }
        if (is_singular()) {
            header('X-Cache-Tags: post-' . get_queried_object_id());
        } else {
            header('X-Cache-Tags: lists');
        }
    }

    public static function post_status_changed(string $new, string $old, WP_Post $post): void {
        if ($new === 'publish' || $old === 'publish') {
            self::post_changed($post->ID);
        }
    }

    public static function post_changed($post_id): void {
        $post = get_post($post_id);
        if (!$post || wp_is_post_revision($post) || wp_is_post_autosave($post)
                || !is_post_type_viewable($post->post_type)) {
            return;
        }
        self::add('tag:post-' . $post->ID);
        $link = get_permalink($post);
        if ($link) {
            $path = self::path($link);
            // the post and what lives under it (its feed, comment pages); not "/*" for a front page
            self::add($path === '/' ? '/' : $path . '*');
        }
        self::add('tag:lists');
        self::add(self::path(home_url('/')));
        self::send();
    }

    public static function comment_changed($comment_id): void {
        $comment = get_comment($comment_id);
        if (!$comment) {
            return;
        }
        self::post_changed((int) $comment->comment_post_ID);
        self::add(self::path(get_feed_link('comments_rss2')) . '*');
        self::send();
    }

    public static function comment_transition($new, $old, $comment): void {
        self::comment_changed($comment->comment_ID);
    }

    private static function path(string $url): string {
        $parts = wp_parse_url($url);
        return ($parts['path'] ?? '/') . (isset($parts['query']) ? '?' . $parts['query'] : '');
    }

    private static function add(string $item): void {
        self::$purge[$item] = true;
    }

    /** (Re)send the header with everything so far: header() replaces the one sent before. */
    private static function send(): void {
        if (self::$purge && !headers_sent()) {
            header('X-Cache-Purge: ' . implode(', ', array_keys(self::$purge)));
        }
    }
}

Gateway_Cache::init();
