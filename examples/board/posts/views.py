import hashlib
import os

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import redirect_to_login
from django.db.models import Count
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from .forms import CommentForm, PostForm
from .models import Post


def posts_with_comment_counts():
    return (
        Post.objects.select_related("author")
        .annotate(comment_count=Count("comments"))
        .order_by("-created_at")
    )


def home(request):
    return render(request, "posts/home.html", {"posts": posts_with_comment_counts()})


def post_detail(request, pk):
    post = get_object_or_404(Post.objects.select_related("author"), pk=pk)
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        form = CommentForm(request.POST)
        if form.is_valid():
            comment = form.save(commit=False)
            comment.post = post
            comment.author = request.user
            comment.save()
            return redirect(post)
    else:
        form = CommentForm()
    comments = post.comments.select_related("author")
    return render(
        request,
        "posts/post_detail.html",
        {"post": post, "comments": comments, "form": form},
    )


@login_required
def post_create(request):
    if request.method == "POST":
        form = PostForm(request.POST, request.FILES)
        if form.is_valid():
            post = form.save(commit=False)
            post.author = request.user
            post.save()
            return redirect(post)
    else:
        form = PostForm()
    return render(request, "posts/post_form.html", {"form": form})


def signup(request):
    if request.method == "POST":
        form = UserCreationForm(request.POST)
        if form.is_valid():
            user = form.save()
            login(request, user)
            return redirect("home")
    else:
        form = UserCreationForm()
    return render(request, "registration/signup.html", {"form": form})


@require_GET
def api_posts(request):
    posts = [
        {
            "id": post.pk,
            "title": post.title,
            "author": post.author.username,
            "created_at": post.created_at.isoformat(),
            "comments": post.comment_count,
            "image_url": post.image.url if post.image else None,
        }
        for post in posts_with_comment_counts()
    ]
    return JsonResponse({"posts": posts})


@require_GET
def api_environment(request):
    """What the app's environment gives it: a plain value, and a secret only masked (its last 4 characters and a
    digest, never the value)."""
    key = os.environ.get("BOARD_API_KEY")
    return JsonResponse({
        "greeting": os.environ.get("BOARD_GREETING"),
        "api_key": None if key is None else {
            "masked": "*" * 8 + key[-4:],
            "sha256": hashlib.sha256(key.encode()).hexdigest(),
        },
    })
