import io
import tempfile
from datetime import timedelta
from pathlib import Path

from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase, override_settings
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from .models import Comment, Post


def make_png(name="tiny.png"):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "steelblue").save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


class SignupTests(TestCase):
    def test_signup_creates_user_and_logs_in(self):
        response = self.client.post(
            reverse("signup"),
            {
                "username": "alice",
                "password1": "a-Long-passw0rd",
                "password2": "a-Long-passw0rd",
            },
        )
        self.assertRedirects(response, reverse("home"))
        user = User.objects.get(username="alice")
        self.assertEqual(int(self.client.session["_auth_user_id"]), user.pk)
        self.assertContains(self.client.get(reverse("home")), "Logged in as")

    def test_login_page_renders(self):
        response = self.client.get(reverse("login"))
        self.assertContains(response, 'id="id_username"')
        self.assertContains(response, 'id="id_password"')


class PostCreateTests(TestCase):
    def setUp(self):
        self.user = User.objects.create_user("bob", password="a-Long-passw0rd")

    def test_anonymous_user_is_redirected_to_login(self):
        url = reverse("post_create")
        response = self.client.get(url)
        self.assertRedirects(response, f"{reverse('login')}?next={url}")

    def test_form_is_multipart(self):
        self.client.force_login(self.user)
        response = self.client.get(reverse("post_create"))
        self.assertContains(response, 'enctype="multipart/form-data"')
        self.assertContains(response, 'id="id_image"')

    def test_logged_in_user_creates_post_with_image(self):
        self.client.force_login(self.user)
        with tempfile.TemporaryDirectory() as media_root, override_settings(
            MEDIA_ROOT=media_root
        ):
            response = self.client.post(
                reverse("post_create"),
                {"title": "Hello", "body": "First post!", "image": make_png()},
            )
            post = Post.objects.get()
            self.assertRedirects(response, post.get_absolute_url())
            self.assertEqual(post.author, self.user)
            self.assertTrue(post.image.name.startswith("posts/"))
            self.assertTrue((Path(media_root) / post.image.name).is_file())

    def test_image_is_optional(self):
        self.client.force_login(self.user)
        self.client.post(reverse("post_create"), {"title": "Plain", "body": "No image"})
        self.assertFalse(Post.objects.get().image)


class CommentTests(TestCase):
    def setUp(self):
        self.user = User.objects.create_user("carol", password="a-Long-passw0rd")
        self.post = Post.objects.create(author=self.user, title="Topic", body="Discuss")
        self.url = reverse("post_detail", args=[self.post.pk])

    def test_logged_in_user_adds_comment(self):
        self.client.force_login(self.user)
        response = self.client.post(self.url, {"body": "Nice one"})
        self.assertRedirects(response, self.url)
        comment = Comment.objects.get()
        self.assertEqual(comment.post, self.post)
        self.assertEqual(comment.author, self.user)
        self.assertContains(self.client.get(self.url), "Nice one")

    def test_anonymous_user_cannot_comment(self):
        response = self.client.post(self.url, {"body": "Sneaky"})
        self.assertRedirects(response, f"{reverse('login')}?next={self.url}")
        self.assertFalse(Comment.objects.exists())


class ListingTests(TestCase):
    def setUp(self):
        user = User.objects.create_user("dave", password="a-Long-passw0rd")
        self.old = Post.objects.create(author=user, title="Older post", body="...")
        self.new = Post.objects.create(
            author=user, title="Newer post", body="...", image="posts/pic.png"
        )
        Post.objects.filter(pk=self.old.pk).update(
            created_at=timezone.now() - timedelta(hours=1)
        )
        Comment.objects.create(post=self.new, author=user, body="First!")

    def test_home_lists_posts_newest_first(self):
        response = self.client.get(reverse("home"))
        self.assertContains(response, 'class="post-title"', count=2)
        self.assertContains(response, "1 comment")
        self.assertContains(response, 'src="/media/posts/pic.png"')
        content = response.content.decode()
        self.assertLess(content.index("Newer post"), content.index("Older post"))

    def test_api_posts(self):
        response = self.client.get(reverse("api_posts"))
        self.assertEqual(response["Content-Type"], "application/json")
        posts = response.json()["posts"]
        self.assertEqual([p["id"] for p in posts], [self.new.pk, self.old.pk])
        self.assertEqual(
            posts[0],
            {
                "id": self.new.pk,
                "title": "Newer post",
                "author": "dave",
                "created_at": self.new.created_at.isoformat(),
                "comments": 1,
                "image_url": "/media/posts/pic.png",
            },
        )
        self.assertEqual(posts[1]["comments"], 0)
        self.assertIsNone(posts[1]["image_url"])

    def test_api_posts_is_get_only(self):
        self.assertEqual(self.client.post(reverse("api_posts")).status_code, 405)
